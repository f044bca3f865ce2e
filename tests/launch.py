"""Run `megatron-sip` as users do: one process, or 2 gloo ranks under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence

from megatron_sip.net import free_port  # noqa: F401  (tests import it from here)
from megatron_sip.train.metrics import read_metrics  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]


def cli_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def run_cli(args: Sequence[str], *, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m megatron_sip ARGS`, under torchrun when nproc > 1; raises on failure."""
    if nproc == 1:
        command = [sys.executable, "-m", "megatron_sip", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                   f"--master-port={free_port()}", "-m", "megatron_sip", *args]
    done = subprocess.run(command, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done

