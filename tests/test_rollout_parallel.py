"""TP=2 and PP=2 (2 gloo ranks) draw the same rollouts as one rank for the same seed.

The weights do not depend on the layout (model/init.py) and the randomness is keyed by (seed,
prefix id), so every rank of every layout must return the single-rank tokens; log-probs differ
only by the reduction order of the TP all-reduce (~1e-6).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.launch import REPO_ROOT, cli_env, free_port
from tests.rollout_worker import (EOD_ID, GENERATE_KWARGS, PREFIXES, SEED, VOCAB_SIZE, build_policy,
                                  rollout_record, tiny_model_config)

pytestmark = [pytest.mark.compat, pytest.mark.slow]


@pytest.fixture(scope="module")
def single_rank() -> dict:
    from megatron_sip.parallel import destroy_parallel, init_parallel
    from megatron_sip.rollout import RolloutGenerator

    cfg = tiny_model_config()
    ctx = init_parallel(cfg, seed=SEED)
    try:
        generator = RolloutGenerator([build_policy(cfg, ctx)], ctx, eod_id=EOD_ID, vocab_size=VOCAB_SIZE)
        return rollout_record(generator.generate(PREFIXES, **GENERATE_KWARGS))
    finally:
        destroy_parallel()


def run_worker(out: Path, *layout: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
               str(REPO_ROOT / "tests" / "rollout_worker.py"), "--out", str(out), *layout]
    done = subprocess.run(command, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")


@pytest.mark.parametrize("layout", [("--tp", "2"), ("--pp", "2")], ids=["tp2", "pp2"])
def test_two_ranks_draw_the_single_rank_rollouts(single_rank: dict, layout, tmp_path: Path) -> None:
    run_worker(tmp_path, *layout)
    for rank in range(2):
        record = torch.load(tmp_path / f"rank{rank}.pt")
        assert bool(record.pop("training_after"))
        for key in ("tokens", "lengths", "mask"):
            assert torch.equal(record[key], single_rank[key]), (rank, key)
        for key in ("logprobs_sampling", "logprobs_model"):
            torch.testing.assert_close(record[key], single_rank[key], atol=1e-5, rtol=0)
