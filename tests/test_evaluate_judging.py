"""The evaluation's judging and scoring paths without a policy model: stub judge engines, the rules
judge, suffix NLL alignment, and the report files built from constructed results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
import torch

from megatron_sip.evaluate import judging
from megatron_sip.evaluate.checkpoints import ModelSource
from megatron_sip.evaluate.config import EvalConfig
from megatron_sip.evaluate.nll import suffix_nll
from megatron_sip.evaluate.report import build_report, validity_note
from megatron_sip.evaluate.summary import ModelResult, summarize
from megatron_sip.errors import ConfigError
from megatron_sip.judges.config import JudgeConfig

PREFIXES = ["The river Varsil flows", "Every spring, Tevvar walked", "The meeting began"]
REFERENCES = [" into the sea.", " to the market.", " with a complaint."]
GENERATIONS = {"checkpoint": ["ours a", "ours b", "ours c"], "baseline": ["theirs a", "theirs b", "theirs c"]}


class _StubEngine:
    """A judge engine answering every quality ask with `first` votes for the text shown first;
    pointwise asks get `pointwise` votes."""

    def __init__(self, first: Sequence[float], pointwise: Sequence[float] = (1.0, 1.0, 0.0)) -> None:
        self.first, self.pointwise = tuple(first), tuple(pointwise)
        self.asks: List = []

    async def ask(self, asks, *, deadline_s: float):
        self.asks += asks
        return [self._votes(a) for a in asks]

    def _votes(self, ask):
        if ask.criterion != "quality":
            return self.pointwise
        return self.first

    async def aclose(self) -> None:
        return None


class _PrefersCheckpoint(_StubEngine):
    def _votes(self, ask):
        if ask.criterion != "quality":
            return self.pointwise
        return (1.0, 1.0) if ask.texts[0].startswith("ours") else (0.0, 0.0)


def _judge(monkeypatch: pytest.MonkeyPatch, engine: _StubEngine) -> judging.JudgeVotes:
    async def open_engine(cfg):
        return engine

    monkeypatch.setattr("megatron_sip.judges.build.open_engine", open_engine)
    cfg = judging.evaluation_judge_config(JudgeConfig(backend="rules"), seeds=2, temperature=0.7)
    with judging.EvalJudge.open(cfg) as judge:
        return judge.judge_generations(prefixes=PREFIXES, references=REFERENCES, generations=GENERATIONS,
                                       batch_size=2)


def _models(votes_texts=GENERATIONS) -> List[ModelResult]:
    return [ModelResult(source=ModelSource(label, Path(f"/runs/{label}/checkpoints/step_00000002"), None), step=2,
                        texts=tuple(texts), num_generated_tokens=(4, 4, 4), nll_sums=(8.0, 12.0, 10.0),
                        nll_tokens=(4, 4, 4)) for label, texts in votes_texts.items()]


def test_both_orders_are_asked_and_a_first_answering_judge_scores_half(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _StubEngine(first=(1.0, 1.0))
    votes = _judge(monkeypatch, engine)
    quality = [a for a in engine.asks if a.criterion == "quality"]
    assert sorted(a.texts for a in quality[:2]) == sorted([("ours a", "theirs a"), ("theirs a", "ours a")])
    assert votes.num_calls == 3 * (2 + 2 * 3)  # 2 orders + (safety, factuality) x 3 texts, per prefix
    summary = summarize(votes, _models())
    assert summary.win_rate.value == 0.5 and summary.win_rate.n == 3
    assert summary.first_position_rate == 1.0
    assert "first position" in validity_note("embedded", summary)
    assert summary.safety["checkpoint"].value == 1.0  # majority of (1, 1, 0)
    assert summary.factuality["baseline"].value == pytest.approx(2 / 3)
    assert summary.reference["safety"].n == 3


def test_a_judge_preferring_the_checkpoint_gives_one(monkeypatch: pytest.MonkeyPatch) -> None:
    summary = summarize(_judge(monkeypatch, _PrefersCheckpoint(first=())), _models())
    assert summary.win_rate.value == 1.0
    assert summary.first_position_rate == 0.5 and summary.order_consistency == 1.0


def test_failed_judgments_are_counted_not_scored(monkeypatch: pytest.MonkeyPatch) -> None:
    votes = _judge(monkeypatch, _StubEngine(first=(), pointwise=()))
    summary = summarize(votes, _models())
    assert votes.num_failed_calls == votes.num_calls
    assert summary.win_rate.value is None and summary.win_rate.num_failed == 3
    assert summary.safety["checkpoint"].value is None
    assert "no valid vote" in validity_note("openai", summary, failed_share=1.0)


def test_the_rules_judge_end_to_end_without_a_baseline(tmp_path: Path) -> None:
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("grumbleweed\n")
    cfg = judging.evaluation_judge_config(JudgeConfig(backend="rules", lexicon=str(lexicon)), seeds=8,
                                          temperature=0.7)
    generations = {"checkpoint": [" into the sea.", " you grumbleweed", " with a complaint."]}
    with judging.EvalJudge.open(cfg) as judge:
        votes = judge.judge_generations(prefixes=PREFIXES, references=REFERENCES, generations=generations,
                                        batch_size=8)
    models = _models(generations)
    summary = summarize(votes, models)
    assert votes.pairs == () and summary.win_rate is None
    assert summary.safety["checkpoint"].value == pytest.approx(2 / 3)
    report = build_report(summary, models, judge=judging.judge_description(cfg), protocol={}, plots=[],
                          num_calls=votes.num_calls, num_failed_calls=votes.num_failed_calls)
    assert report["win_rate"] is None and report["judge"]["samples"] == 1
    assert report["nll"]["checkpoint"] == pytest.approx(30.0 / 12)
    json.dumps(report)  # serialisable as it is


def test_suffix_nll_scores_exactly_the_suffix_tokens() -> None:
    # A head whose "NLL" is the label id: the sums must be the suffix ids, nothing of the prefix.
    def label_head(model, tokens_BS, position_ids_BS, labels_BS, loss_mask_BS):
        return labels_BS.float()

    prefixes = [np.array([5, 6, 7]), np.array([9])]
    suffixes = [np.array([100, 200]), np.array([300, 400])]
    sums, counts = suffix_nll(torch.nn.Identity(), label_head, prefixes, suffixes, pad_id=0,
                              device=torch.device("cpu"), batch_size=2)
    assert sums == [300.0, 700.0] and counts == [2, 2]


def test_eval_config_names_the_key_to_change() -> None:
    with pytest.raises(ConfigError, match="eval.num_prefixes"):
        EvalConfig(num_prefixes=0)
    with pytest.raises(ConfigError, match="eval.checkpoint"):
        EvalConfig().require_checkpoint()


def test_training_curves_tolerate_resumed_and_torn_metrics(tmp_path: Path) -> None:
    from megatron_sip.evaluate import plots
    from megatron_sip.train.metrics import latest_per_step, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n{"step": 2, "loss": 2.0}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 2]  # as written, torn line skipped
    records = latest_per_step(read_metrics(path))
    assert [(r["step"], r["loss"]) for r in records] == [(1, 3.0), (2, 2.0)]
    assert plots.plot_training_curves({"checkpoint": records}, tmp_path / "curves.png")
    assert not plots.plot_training_curves({"checkpoint": [{"step": 1}]}, tmp_path / "none.png")


def test_the_report_describes_each_judge_backend():
    from megatron_sip.judges.config import JudgeConfig

    classifier = judging.judge_description(JudgeConfig(backend="classifier", criteria=["safety"]))
    assert "alt-profanity-check" in classifier["model"] and classifier["decision"].startswith("classifier")
    assert judging.judge_description(JudgeConfig(backend="rules"))["decision"] == "programmatic"


def test_paired_differences_pair_each_prefix_and_leave_out_failed_ones() -> None:
    from megatron_sip.evaluate.summary import paired_differences

    def model(label, sums, tokens):
        return ModelResult(source=ModelSource(label, Path(f"/runs/{label}"), None), step=1, texts=("t",) * 4,
                           num_generated_tokens=(4,) * 4, nll_sums=sums, nll_tokens=tokens)

    by_label = {"checkpoint": model("checkpoint", (4.0, 8.0, 2.0, 6.0), (4, 4, 2, 0)),
                "baseline": model("baseline", (8.0, 8.0, 4.0, 2.0), (4, 4, 2, 2))}
    # Majority safe: checkpoint 1, 1, failed, 1; baseline 0, 1, 0, 0 -> prefixes 0, 1, 3 pair up.
    safety = {"checkpoint": ((1.0,), (1.0, 1.0, 0.0), (), (1.0,)), "baseline": ((0.0,), (1.0,), (0.0,), (0.0, 0.0))}
    differences = paired_differences(safety, by_label)
    assert differences["safety"]["value"] == pytest.approx(2 / 3) and differences["safety"]["num_prefixes"] == 3
    assert 0.0 <= differences["safety"]["ci_low"] <= 2 / 3 <= differences["safety"]["ci_high"] <= 1.0
    # NLL per token: checkpoint 1, 2, 1, (no tokens); baseline 2, 2, 2, 1 -> prefixes 0, 1, 2.
    assert differences["nll"]["value"] == pytest.approx(-2 / 3) and differences["nll"]["num_prefixes"] == 3
    assert paired_differences(safety, {"checkpoint": by_label["checkpoint"]}) == {}
