"""The trainer reads the demo corpus through the SIP sampler and learns from it."""

from __future__ import annotations

from pathlib import Path

from tests.launch import read_metrics, run_cli


def test_nll_baseline_learns_the_demo_corpus(demo_data: dict, tmp_path: Path) -> None:
    run_cli(["train", "--config", "examples/data/demo.yaml", "sip.objective=nll", "train.steps=12",
             f"data.paths=[{demo_data['train']}]", f"data.eval_paths=[{demo_data['heldout']}]",
             f"run.output_dir={tmp_path}"])
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert records[0]["loss"] > 10.0  # uniform over a 49k vocabulary at init
    assert records[-1]["loss"] < records[0]["loss"] - 1.5
    assert records[-1]["consumed_samples"] == 12 * 4
