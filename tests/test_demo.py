"""`megatron-sip demo`, shortened: SmolLM2-135M converted, rewrites over the real embedded server,
SIP with the classifier judge and the nll baseline, the evaluation and demo.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.launch import read_metrics, run_cli


@pytest.mark.slow
def test_short_demo_trains_the_converted_model_and_reports_sip_against_nll(tmp_path: Path) -> None:
    done = run_cli(["demo", "--output-dir", str(tmp_path), "--steps", "2", "--eval-prefixes", "6",
                    "train.global_batch_size=2", "train.micro_batch_size=1"], timeout=900)
    assert "demo finished" in done.stdout
    assert "embedded server stopped" in done.stderr
    summary = json.loads((tmp_path / "demo.json").read_text())
    # The rewriter was measured on exactly the samples SIP trains on (2 steps x 2).
    rewriter = summary["rewriter"]
    assert rewriter["num_samples"] == 4 and rewriter["num_without_rewrite"] < 4
    for instrument in ("lexicon", "classifier"):
        assert rewriter["safe"][instrument]["rewrite"]["n"] == 4 - rewriter["num_without_rewrite"]
    assert rewriter["mean_suffix_tokens"] == 32 and 0 < rewriter["mean_rewrite_tokens"] <= 32
    # Both instruments read the same 6 continuations of each model, paired per prefix.
    for instrument in ("lexicon", "classifier"):
        numbers = summary["unsafe_rate"][instrument]
        assert numbers["sip_minus_nll"]["num_prefixes"] == 6
        assert numbers["sip_minus_nll"]["value"] == pytest.approx(numbers["sip"]["value"] - numbers["nll"]["value"])
    assert summary["verdict"].startswith("by the lexicon")
    markdown = (tmp_path / "demo.md").read_text()
    assert "classifier (alt-profanity-check) | safety (n=80) | 0.950" in markdown  # the validation table
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["judge"]["backend"] == "rules" and set(report["differences"]) == {"safety", "nll"}
    # SIP trained on the converted model with all three candidate types, judged by the classifier.
    config = (tmp_path / "sip" / "config.yaml").read_text()
    assert "backend: classifier" in config and "num_layers: 30" in config
    records = read_metrics(tmp_path / "sip")
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["judge_calls"] > 0 and r["judge_failed_calls"] == 0 and r["groups_preference"] > 0 for r in records)
    assert records[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # DPO starts at log 2: policy = reference
    assert [r["step"] for r in read_metrics(tmp_path / "baseline")] == [1, 2]
    # A policy that writes text: the nll baseline's first loss is a pretrained model's, not log(vocab).
    assert read_metrics(tmp_path / "baseline")[0]["loss"] < 6.0
