"""Every trtllm-serve / vLLM config and command the project ships uses option names those servers
accept, checked against the names recorded from their sources (tests/data/upstream_serve_options.json,
with the upstream versions). Both servers refuse unknown options at start, so a wrong name would
stop every sidecar at the health gate."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Set

import pytest
import yaml

from tests.launch import REPO_ROOT

pytestmark = pytest.mark.compat

UPSTREAM = json.loads((REPO_ROOT / "tests" / "data" / "upstream_serve_options.json").read_text())
TRTLLM, VLLM = UPSTREAM["trtllm-serve"], UPSTREAM["vllm serve"]
SERVE = REPO_ROOT / "examples" / "serve"
# Where commands appear: docs, sbatch scripts and their library, serve configs' comments.
COMMAND_SOURCES = sorted([*(REPO_ROOT / "docs").glob("*.md"), REPO_ROOT / "README.md",
                          *(REPO_ROOT / "slurm").rglob("*.sh"), *(REPO_ROOT / "slurm").glob("*.sbatch"),
                          *SERVE.glob("*.yaml")])
VLLM_SERVE_ONLY = {"config", "headless", "api-server-count"}


def accepted_everywhere(by_version: Dict[str, List[str]]) -> Set[str]:
    """Names every recorded version accepts."""
    return set.intersection(*(set(names) for names in by_version.values()))


def vllm_options() -> Set[str]:
    return {name.replace("_", "-") for version in VLLM["versions"]
            for name in (set(VLLM["engine_args"][version]) | set(VLLM["frontend_args"][version]))
            if all(name in set(VLLM["engine_args"][v]) | set(VLLM["frontend_args"][v]) for v in VLLM["versions"])}


@pytest.mark.parametrize("path", sorted(SERVE.glob("trtllm-serve-*.yaml")), ids=lambda p: p.name)
def test_trtllm_extra_options_are_llm_api_fields(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    unknown = sorted(set(data) - accepted_everywhere(TRTLLM["llm_args"]))
    assert not unknown, f"{path.name}: not LLM API fields: {unknown} (CLI flags such as tp_size are not)"
    for section in ("kv_cache_config", "cuda_graph_config", "moe_config"):
        if section in data:
            bad = sorted(set(data[section]) - accepted_everywhere(TRTLLM[section]))
            assert not bad, f"{path.name}: {section} has unknown fields {bad}"
    if "moe_config" in data and "backend" in data["moe_config"]:
        assert data["moe_config"]["backend"] in accepted_everywhere(TRTLLM["moe_config.backend"])


@pytest.mark.parametrize("path", sorted(SERVE.glob("vllm-serve-*.yaml")), ids=lambda p: p.name)
def test_vllm_config_keys_are_options(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    unknown = sorted(k for k in data if k.replace("_", "-") not in vllm_options())
    assert not unknown, f"{path.name}: vllm serve does not know {unknown}"
    # `vllm serve --config` silently drops `flag: false`: write `no-flag: true` instead.
    assert not [k for k, v in data.items() if v is False], f"{path.name}: a `key: false` is ignored by vLLM"


def _commands(program: str) -> List[tuple]:
    """(file, flags) for every `program ...` command line, continuation lines joined."""
    found = []
    for path in COMMAND_SOURCES:
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            start = line.find(program + " ")
            if start < 0:
                continue
            flags = re.findall(r"(?<![\w-])--([a-z][a-z0-9_-]*)", line[start:])
            if flags:
                found.append((path.relative_to(REPO_ROOT), flags))
    return found


def test_there_are_commands_to_check() -> None:
    assert len(_commands("trtllm-serve")) >= 2 and len(_commands("vllm serve")) >= 2


@pytest.mark.parametrize("where, flags", _commands("trtllm-serve"), ids=lambda x: str(x))
def test_trtllm_serve_commands_use_its_flags(where, flags) -> None:
    known = {flag.lstrip("-") for flag in TRTLLM["cli_flags"]["cli"]}
    unknown = sorted(set(flags) - known)
    assert not unknown, f"{where}: trtllm-serve has no {unknown}"


@pytest.mark.parametrize("where, flags", _commands("vllm serve"), ids=lambda x: str(x))
def test_vllm_serve_commands_use_its_flags(where, flags) -> None:
    unknown = sorted(set(flags) - vllm_options() - VLLM_SERVE_ONLY)
    assert not unknown, f"{where}: vllm serve has no {unknown}"
    assert "api-key" not in flags, f"{where}: a key on the command line shows in ps; use VLLM_API_KEY"


def test_the_checker_catches_a_wrong_name() -> None:
    assert "tp_size" not in accepted_everywhere(TRTLLM["llm_args"])
    assert "tensor_parallel_size" in accepted_everywhere(TRTLLM["llm_args"])
    assert "tensor-parallel-size" in vllm_options() and "tp-size" not in vllm_options()
