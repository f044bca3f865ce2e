"""Shared pytest setup: markers, the repository root for tests that run the CLI, the demo corpus
and the embedded judge server (both built once per session)."""

from __future__ import annotations

import os
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
    from megatron_sip.data.demo_corpus import build_demo_datasets
    from tests.launch import cli_env

    return build_demo_datasets(tmp_path_factory.mktemp("demo_data"), env=cli_env())


@pytest.fixture(scope="session")
def embedded_judge_server(tmp_path_factory) -> Iterator[str]:
    """`megatron-sip serve --model embedded` (SmolLM2 over real HTTP) for the session: its URL.
    It must stop cleanly on SIGTERM."""
    from megatron_sip.embedded import EmbeddedModelMissing, embedded_gguf_path
    from megatron_sip.serve.launcher import ServeProcess
    from tests.launch import cli_env

    try:
        embedded_gguf_path()
    except EmbeddedModelMissing as exc:
        pytest.skip(str(exc))
    server = ServeProcess(["--model", "embedded", "--max-batch-size", "8"],
                          log_path=tmp_path_factory.mktemp("serve") / "stderr.log", ready_timeout_s=240,
                          env=cli_env(), cwd=REPO_ROOT)
    yield server.start()
    assert server.stop() == 0 and "stopped" in server.printed(), f"unclean stop; see {server.log_path}"
