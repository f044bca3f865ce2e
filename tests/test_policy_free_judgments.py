"""Policy-free judgments made offline (`megatron-sip rewrite --judge`) and reused in training: with a
deterministic judge, a run over a store with stored judgments sends fewer judge calls and trains
exactly as a run that asks everything online; a store judged by another judge is not reused."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List

import pytest

from megatron_sip.judges.policy_free import judgment_names, judgments_from_result, known_judgments
from megatron_sip.judges.types import GroupResult
from tests.launch import read_metrics, run_cli

pytestmark = pytest.mark.slow
COMMON = ["--config", "examples/data/demo.yaml", "judge.backend=rules", "rewriter.backend=rules",
          "judge.criteria=[quality,safety,factuality]", "sip.num_rollouts=2", "train.micro_batch_size=1",
          "train.global_batch_size=4", "train.lr_warmup_steps=1", "train.steps=2"]


def _fill(demo_data: dict, store: Path, *extra: str) -> None:
    run_cli(["rewrite", *COMMON, f"data.paths=[{demo_data['train']}]", f"data.rewrite_store={store}",
             "--no-progress", *extra])


def _train(demo_data: dict, store: Path, out: Path, *extra: str) -> List[dict]:
    run_cli(["train", *COMMON, f"data.paths=[{demo_data['train']}]", f"data.rewrite_store={store}",
             f"run.output_dir={out}", *extra])
    return read_metrics(out)


def test_stored_judgments_replace_online_calls_and_change_nothing_else(demo_data, tmp_path):
    _fill(demo_data, tmp_path / "judged", "--judge")
    _fill(demo_data, tmp_path / "plain")
    judged = _train(demo_data, tmp_path / "judged", tmp_path / "run_judged")
    online = _train(demo_data, tmp_path / "plain", tmp_path / "run_online")
    assert all(m["groups_preference"] + m["groups_tied"] == 4 for m in online)  # every group has a rewrite
    for a, b in zip(judged, online):
        # Per group: quality suffix vs rewrite (2 orders) and safety + factuality of both: 6 calls.
        assert a["judge_calls"] == b["judge_calls"] - 4 * 6
        for key in ("loss", "groups_preference", "rewrite_chosen_rate", "suffix_chosen_rate",
                    "rollout_chosen_rate", "reward_mean_suffix", "reward_mean_rewrite"):
            assert (a.get(key) == b.get(key)) or (a.get(key) != a.get(key) and b.get(key) != b.get(key)), key


def test_another_judge_has_another_fingerprint(tmp_path):
    """Stored judgments are keyed by the fingerprint: another lexicon, prompt or model is another
    judge, whose known_judgments are empty (so it asks online)."""
    import asyncio

    from megatron_sip.judges.config import JudgeConfig
    from megatron_sip.judges.judge import AsyncJudge

    async def fingerprint(**settings) -> str:
        judge = await AsyncJudge.open(JudgeConfig(**settings))
        try:
            return judge.fingerprint()
        finally:
            await judge.aclose()

    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("kill\n")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "safety.txt").write_text("Is this safe? $candidate\n$decision")
    base = asyncio.run(fingerprint(backend="rules", criteria=["safety"]))
    assert base == asyncio.run(fingerprint(backend="rules", criteria=["safety"]))
    assert base != asyncio.run(fingerprint(backend="rules", criteria=["safety"], lexicon=str(lexicon)))
    assert base != asyncio.run(fingerprint(backend="rules", criteria=["safety", "quality"]))
    from megatron_sip.judges.criteria import PromptSet
    from megatron_sip.judges.engine import ModelEngine

    cfg = JudgeConfig(endpoints=["http://unused"], criteria=["safety"], model="m")
    packaged = ModelEngine(object(), cfg, PromptSet(["safety"], prompt_dir=None)).fingerprint()
    overridden = ModelEngine(object(), cfg, PromptSet(["safety"], prompt_dir=str(prompts))).fingerprint()
    other_model = ModelEngine(object(), JudgeConfig(endpoints=["http://unused"], criteria=["safety"], model="m2"),
                              PromptSet(["safety"], prompt_dir=None)).fingerprint()
    assert len({packaged, overridden, other_model}) == 3


def test_names_results_and_known_judgments_round_trip():
    names = judgment_names("f00d", ["quality", "safety"])
    assert names == ["f00d/quality:suffix>rewrite", "f00d/safety:suffix", "f00d/safety:rewrite"]
    result = GroupResult(scores={"quality": (1.0, 0.0), "safety": (1.0, None)}, rewards=(2.0, None), best=None,
                         worst=None, pair_outcomes={(0, 1): 0.75}, num_calls=4, num_failed_calls=1,
                         num_failed_judgments=1, latency_s=0.1)
    stored = judgments_from_result("f00d", result)
    assert stored == {"f00d/quality:suffix>rewrite": 0.75, "f00d/safety:suffix": 1.0}
    stored["f00d/safety:rewrite"] = math.nan  # what the store holds for a failed judgment
    pairs, scores = known_judgments(stored, "f00d", ["quality", "safety"], ("rewrite", "rollout", "suffix"))
    assert pairs == {(2, 0): 0.75} and scores == {"safety": {2: 1.0}}
    assert known_judgments(stored, "beef", ["quality", "safety"], ("suffix", "rewrite")) == ({}, {})
    assert known_judgments(stored, "f00d", ["quality"], ("suffix", "rollout")) == ({}, {})
