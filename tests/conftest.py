"""Shared pytest setup: markers, and the repository root for tests that run the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Keep each test process to the machine's size; multi-rank tests spawn their own processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    for marker, meaning in {
        "slow": "takes more than a few seconds (still run by `make test`)",
        "gpu": "needs a CUDA device (skipped on CPU)",
        "slurm": "starts a local SLURM cluster (needs root and Debian's slurm packages)",
        "compat": "fast tests also run against megatron-core 0.19.x in CI's compatibility leg",
    }.items():
        config.addinivalue_line("markers", f"{marker}: {meaning}")


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict:
    """The demo corpus (examples/data) preprocessed once per test session: prefixes by split."""
    from tests.launch import run_cli

    out = tmp_path_factory.mktemp("demo_data")
    prefixes = {}
    for split in ("train", "heldout"):
        prefixes[split] = str(out / split)
        run_cli(["preprocess", "--input", str(REPO_ROOT / "examples" / "data" / f"{split}.jsonl"),
                 "--output-prefix", prefixes[split]])
    return prefixes
