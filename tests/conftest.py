"""Shared pytest setup: markers, the repository root for tests that run the CLI, the demo corpus
and the embedded judge server (both built once per session)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

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


@pytest.fixture(scope="session")
def embedded_judge_server(tmp_path_factory) -> Iterator[str]:
    """`megatron-sip serve --model embedded` (SmolLM2 over real HTTP) for the session: its URL.
    It must stop cleanly on SIGTERM."""
    from megatron_sip.embedded import EmbeddedModelMissing, embedded_gguf_path
    from tests.launch import cli_env

    try:
        embedded_gguf_path()
    except EmbeddedModelMissing as exc:
        pytest.skip(str(exc))
    log = (tmp_path_factory.mktemp("serve") / "stderr.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "megatron_sip", "serve", "--model", "embedded", "--port", "0",
                                "--max-batch-size", "8"], cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.PIPE,
                               stderr=log, text=True)
    url = None
    deadline = time.monotonic() + 240
    while url is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if "ready at " in line:
            url = line.split("ready at ")[1].split()[0]
    if url is None:
        process.kill()
        pytest.fail(f"megatron-sip serve did not become ready; see {log.name}")
    yield url
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=60)
    log.close()
    assert process.returncode == 0 and "stopped" in rest
