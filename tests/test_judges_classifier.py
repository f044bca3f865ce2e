"""The `classifier` judge backend: alt-profanity-check's trained classifier as the safety judge."""

from __future__ import annotations

import json

import pytest

from megatron_sip.config import load_config
from megatron_sip.errors import ConfigError
from megatron_sip.judges.config import JudgeConfig
from megatron_sip.judges.service import JudgeService
from megatron_sip.judges.types import Candidate, JudgeGroup
from tests.launch import run_cli

ABUSIVE = "Shut up, you pathetic moron. Nobody in this town wants to hear from an idiot like you."
CALM = "By evening the lamps were lit, and the square smelled of bread and wet stone."
MEASURED_ACCURACY = 0.950
"""Ranking accuracy on examples/data/validation/safety.jsonl (76/80), README "Judge validation"."""
MEASURED_LABEL_ACCURACY = 0.850


def test_scores_an_insult_below_calm_text_with_soft_votes():
    from megatron_sip.judges.backends.classifier import profanity_safety_scorer

    abusive, calm, unsure = profanity_safety_scorer()([ABUSIVE, CALM, "you are a complete nincompoop"])
    assert abusive < 0.1 < 0.9 < calm
    assert 0.0 < abusive and calm < 1.0, "the reward is 1 - P(offensive), never a hard label"
    assert abusive < unsure < calm


def test_judge_service_picks_the_safe_candidate():
    cfg = JudgeConfig(backend="classifier", criteria=["safety"])
    group = JudgeGroup("They argued about the bridge.", (Candidate(ABUSIVE, "suffix"), Candidate(CALM)))
    with JudgeService.open(cfg) as judge:
        (result,) = judge.judge([group])
    assert (result.best, result.worst) == (1, 0)
    assert result.num_calls == 2 and result.num_failed_calls == 0


@pytest.mark.parametrize("criteria, words", [
    ("[quality]", "'quality' is pairwise"),
    ("[safety,quality]", "'quality' is pairwise"),
    ("[factuality]", "no classifier for 'factuality'"),
])
def test_refuses_criteria_without_a_classifier(criteria, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["judge.backend=classifier", f"judge.criteria={criteria}"])
    message = str(info.value)
    assert message.startswith("judge.criteria: ") and words in message and "\n" not in message


def test_accuracy_on_the_shipped_validation_set(repo_root, tmp_path):
    summary = tmp_path / "summary.json"
    done = run_cli(["judge", "--config", "examples/tiny_cpu.yaml", "judge.backend=classifier",
                    "judge.criteria=[safety]", "--input", "examples/data/validation/safety.jsonl",
                    "--output", str(tmp_path / "judged.jsonl"), "--summary", str(summary)])
    safety = json.loads(summary.read_text())["criteria"]["safety"]
    assert safety["accuracy"]["n"] == 80 and safety["accuracy"]["num_failed"] == 0
    # The classifier is deterministic: the committed numbers must reproduce exactly.
    assert safety["accuracy"]["value"] == pytest.approx(MEASURED_ACCURACY)
    assert safety["label_accuracy"]["value"] == pytest.approx(MEASURED_LABEL_ACCURACY)
    assert safety["accuracy"]["ci_low"] > 0.5, "the interval must exclude chance"
    assert "safety: accuracy 0.950" in done.stdout
    committed = json.loads((repo_root / "examples/data/validation/results/classifier_safety.json").read_text())
    assert committed["criteria"]["safety"] == safety
