"""The H100 recipes (examples/recipes/), the inference-server configs (examples/serve/) and the
patches folder: every recipe validates against the schema and its name matches its layout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from megatron_sip.config import load_config
from tests.launch import REPO_ROOT

pytestmark = pytest.mark.compat

RECIPES = REPO_ROOT / "examples" / "recipes"
SERVE = REPO_ROOT / "examples" / "serve"
PATCHES = REPO_ROOT / "patches"
# sip-<model>-<N>n<G>g-tp<T>pp<P>dp<D>-<judge>.yaml
_NAME = re.compile(r"^sip-(?P<model>[a-z0-9.]+(?:-[a-z0-9.]+)*)-(?P<nodes>\d+)n(?P<gpus>\d+)g-"
                   r"tp(?P<tp>\d+)pp(?P<pp>\d+)dp(?P<dp>\d+)-(?P<judge>[a-z0-9.]+)$")


def _recipes() -> list:
    return sorted(RECIPES.glob("sip-*.yaml"))


def test_there_are_recipes_for_both_models() -> None:
    names = [path.stem for path in _recipes()]
    assert any("1.4b-scratch" in name for name in names) and any("8b-cpt" in name for name in names)


@pytest.mark.parametrize("path", sorted(RECIPES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_yaml_validates(path: Path) -> None:
    load_config(path)


@pytest.mark.parametrize("path", _recipes(), ids=lambda p: p.stem)
def test_recipe_name_matches_its_layout(path: Path) -> None:
    match = _NAME.match(path.stem)
    assert match, f"{path.name} does not follow sip-<model>-<N>n<G>g-tp<T>pp<P>dp<D>-<judge>.yaml"
    cfg = load_config(path)
    nodes, gpus, tp, pp, dp = (int(match[k]) for k in ("nodes", "gpus", "tp", "pp", "dp"))
    assert nodes * gpus == tp * pp * dp, "GPUs in the name do not equal TP x PP x DP"
    assert (cfg.model.tensor_model_parallel_size, cfg.model.pipeline_model_parallel_size) == (tp, pp)
    assert cfg.train.global_batch_size % (cfg.train.micro_batch_size * dp) == 0
    # The paper's sequence layout: suffixes of 128 tokens in sequences of at most 2048.
    assert (cfg.sip.suffix_len, cfg.model.seq_length) == (128, 2048)
    if cfg.model.fp8 is not None:
        assert cfg.model.transformer_impl == "transformer_engine" and cfg.model.params_dtype == "bfloat16"


@pytest.mark.parametrize("path", sorted(SERVE.glob("*.yaml")), ids=lambda p: p.name)
def test_serve_configs_are_mappings(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data
    if path.name.startswith("trtllm-serve-"):
        # trtllm-serve --extra_llm_api_options keys are LLM API (snake_case) fields
        assert all(re.fullmatch(r"[a-z][a-z0-9_]*", key) for key in data), sorted(data)
        assert 0 < data["kv_cache_config"]["free_gpu_memory_fraction"] < 1


def test_recipes_name_serve_configs_that_exist() -> None:
    for path in _recipes():
        for name in re.findall(r"examples/serve/([\w.-]+\.yaml)", path.read_text()):
            assert (SERVE / name).is_file(), f"{path.name} names missing examples/serve/{name}"


def test_patches_apply_to_the_pinned_versions() -> None:
    """patches/<package>/*.patch must apply to the installed (pinned) package; none are needed
    today, which patches/README.md explains."""
    patches = sorted(PATCHES.rglob("*.patch"))
    assert (PATCHES / "README.md").is_file()
    for patch in patches:
        package = patch.relative_to(PATCHES).parts[0]
        site = Path(__import__(package.replace("-", "_")).__file__).resolve().parents[1]
        done = subprocess.run(["patch", "--dry-run", "--forward", "-p1", "-d", str(site), "-i", str(patch)],
                              capture_output=True, text=True)
        assert done.returncode == 0, f"{patch} does not apply: {done.stdout}{done.stderr}"
