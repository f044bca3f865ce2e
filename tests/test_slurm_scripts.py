"""Every shell script parses (`bash -n`) and is shellcheck-clean (skipped where shellcheck is not
installed; .ci/slurm_setup.sh installs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.launch import REPO_ROOT

SCRIPTS = sorted([*(REPO_ROOT / "slurm").rglob("*.sbatch"), *(REPO_ROOT / "slurm").rglob("*.sh"),
                  *(REPO_ROOT / ".ci").glob("*.sh"), REPO_ROOT / ".ci" / "run"])


def _ids(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


@pytest.mark.parametrize("script", SCRIPTS, ids=_ids)
def test_bash_parses(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (.ci/slurm_setup.sh installs it)")
@pytest.mark.parametrize("script", SCRIPTS, ids=_ids)
def test_shellcheck_clean(script: Path) -> None:
    # -x follows `source`; the sbatch scripts source slurm/lib/sip_common.sh relative to the repo.
    done = subprocess.run(["shellcheck", "-x", "--shell=bash", str(script)], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_scripts_are_executable() -> None:
    for script in SCRIPTS:
        if script.suffix in (".sbatch", "") or script.parent.name == ".ci" or script.name == "sip_node_run.sh":
            assert script.stat().st_mode & 0o111, f"{_ids(script)} is not executable"


def _bash(snippet: str, **env: str) -> str:
    """Run `snippet` after sourcing slurm/lib/sip_common.sh; its stdout."""
    done = subprocess.run(["bash", "-c", f'source "{REPO_ROOT}/slurm/lib/sip_common.sh"; {snippet}'],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("items", [
    ["http://n1:8000", "http://n2:8000"],
    ["/data/a b/shard,1]", "it's", "back\\slash", "end\\", "q\\'x", ""],
])
def test_list_overrides_survive_hydra(items) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    line = _bash('sip_list_override data.paths "$@"'.replace('"$@"', " ".join(_quote(i) for i in items)))
    assert OverridesParser.create().parse_override(line).value() == items
    value = _bash(f"sip_value_override run.output_dir {_quote(items[0])}")
    assert OverridesParser.create().parse_override(value).value() == items[0]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_sip_overrides_split_like_words_and_keep_quoted_spaces() -> None:
    out = _bash('sip_split_overrides "$SIP_OVERRIDES" | tr "\\0" "\\n"',
                SIP_OVERRIDES="train.steps=5 \"run.name=my run\" 'data.paths=[a b]'")
    assert out.splitlines() == ["train.steps=5", "run.name=my run", "data.paths=[a b]"]
    bad = subprocess.run(["bash", "-c", f'source "{REPO_ROOT}/slurm/lib/sip_common.sh"; sip_split_overrides "a=\'b"'],
                         capture_output=True, text=True)
    assert bad.returncode != 0


@pytest.mark.parametrize("settings, expected", [
    ({"command": "default", "tp": "8"}, "trtllm-llmapi-launch"),
    ({"command": "default", "tp": "1"}, ""),
    ({"command": "vllm serve m", "tp": "8"}, ""),
    ({"command": "default", "tp": "8", "SIP_JUDGE_LAUNCHER": "none"}, ""),
    ({"command": "vllm serve m", "tp": "2", "SIP_JUDGE_LAUNCHER": "my-launch"}, "my-launch"),
])
def test_multi_gpu_trtllm_serve_gets_the_mpi_launcher(settings, expected) -> None:
    settings = dict(settings)
    command, tp = settings.pop("command"), settings.pop("tp")
    command_ref = '"$SIP_DEFAULT_SERVE_CMD"' if command == "default" else _quote(command)
    assert _bash(f"sip_sidecar_launcher JUDGE {command_ref} {tp}", **settings).strip() == expected
