"""TP=2, PP=2 and DP=2 on 2 gloo ranks reproduce the single-rank loss trajectory.

This holds because the initial weights do not depend on the layout (model/init.py), every DP
layout trains on the same global batch, and the loss is a sum divided by the global count.
(Synthetic documents: data.paths is empty.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.compat

from tests.launch import read_metrics, run_cli

STEPS = 5
COMMON = ["train", "sip.objective=nll", f"train.steps={STEPS}", "train.micro_batch_size=1",
          "train.global_batch_size=4", "train.lr_warmup_steps=1"]


@pytest.fixture(scope="module")
def single_rank(tmp_path_factory) -> list:
    out = tmp_path_factory.mktemp("single")
    run_cli([*COMMON, f"run.output_dir={out}"])
    return read_metrics(out)


@pytest.mark.slow
@pytest.mark.parametrize("layout", [
    "model.tensor_model_parallel_size=2",
    "model.pipeline_model_parallel_size=2",
    "model.tensor_model_parallel_size=1",  # DP=2: each rank runs half the micro-batches
], ids=["tp2", "pp2", "dp2"])
def test_two_ranks_match_one(single_rank: list, layout: str, tmp_path: Path) -> None:
    run_cli([*COMMON, layout, f"run.output_dir={tmp_path}"], nproc=2)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for one, two in zip(single_rank, records):
        assert abs(one["loss"] - two["loss"]) < 1e-4, (one, two)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-3)
        assert one["lr"] == pytest.approx(two["lr"])
        assert one["tokens"] == two["tokens"]


def test_metrics_have_the_documented_fields(single_rank: list) -> None:
    for record in single_rank:
        for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "step_time_s"):
            assert key in record
        assert record["tokens_per_s"] > 0 and record["step_time_s"] > 0
