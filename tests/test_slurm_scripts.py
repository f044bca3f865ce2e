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
