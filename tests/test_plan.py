"""`megatron-sip plan`: the judge work it counts is what the judge really asks, its capacity model
is the closed form, and the command runs from given or probed figures."""

from __future__ import annotations

import asyncio
import json

import pytest

from megatron_sip.judges.config import JudgeConfig
from megatron_sip.judges.judge import AsyncJudge
from megatron_sip.judges.plan import StepShape, calls_per_group, capacity
from megatron_sip.judges.types import Candidate, JudgeGroup
from tests.fault_server import FaultServer
from tests.launch import run_cli


def _shape(criteria, schedule="round_robin", *, stored=False, both=True, candidates=6) -> StepShape:
    return StepShape(num_prefixes=3, num_candidates=candidates, prefix_tokens=64, candidate_tokens=16,
                     criteria=criteria, schedule=schedule, knockout_budget=0.3, both_orders=both,
                     stored_policy_free=stored, has_rewrite=True)


def _judged_calls(shape: StepShape, **cfg) -> int:
    kinds = ["suffix", "rewrite"] + ["rollout"] * (shape.num_candidates - 2)
    group = JudgeGroup("A start", tuple(Candidate(f" text number {i} " * (i + 1), k) for i, k in enumerate(kinds)),
                       reference=" text number 0")
    if shape.stored_policy_free:
        group = JudgeGroup(group.prefix, group.candidates, group.reference, known_pairs={(0, 1): 0.5},
                           known_scores={c: {0: 1.0, 1: 1.0} for c in shape.criteria if c != "quality"})

    async def judged():
        judge = await AsyncJudge.open(JudgeConfig(backend="rules", criteria=list(shape.criteria),
                                                  schedule=shape.schedule, **cfg))
        try:
            [result] = await judge.judge([group])
            return result.num_calls
        finally:
            await judge.aclose()
    return asyncio.run(judged())


@pytest.mark.parametrize("shape, cfg", [
    (_shape(["quality", "safety", "factuality"]), {}),
    (_shape(["quality"], "pivot"), {}),
    (_shape(["quality", "safety"], stored=True), {}),
    (_shape(["quality"], both=False, candidates=5), {"pair_order": "random"}),
])
def test_counted_calls_are_the_calls_the_judge_makes(shape, cfg):
    assert sum(calls_per_group(shape).values()) == _judged_calls(shape, **cfg)


def test_knockout_count_bounds_what_it_asks():
    shape = _shape(["quality"], "knockout", candidates=10)
    assert _judged_calls(shape) <= sum(calls_per_group(shape).values())


def test_capacity_closed_form():
    # 100 calls at 10/s on one replica: 10 s a step against 2 s of trainer work.
    plan = capacity(100, 10.0, 2.0, replicas=1)
    assert plan.judge_s == pytest.approx(10.0)
    assert plan.exposed_share_no_overlap == pytest.approx(10 / 12)
    assert plan.exposed_share_overlap == pytest.approx(8 / 10)
    assert plan.replicas_needed_overlap == 5       # 10 * 0.9 / 2 = 4.5
    assert plan.replicas_needed_no_overlap == 45   # 10 * 0.9 / (2 * 0.1)
    met = capacity(100, 10.0, 2.0, replicas=plan.replicas_needed_overlap)
    assert met.exposed_share_overlap == 0.0
    assert capacity(100, 10.0, 2.0, replicas=45).exposed_share_no_overlap <= 0.1 + 1e-12


def test_the_command_from_given_figures_and_from_a_probe(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "time_step_s": 3.0, "time_judge_wait_s": 1.0}) + "\n"
                               for s in range(1, 5)))
    common = ["plan", "--config", "examples/tiny_cpu.yaml", "judge.criteria=[quality,safety]",
              "sip.candidates=[suffix,rollouts]", "judge.decision=direct", "--metrics", str(metrics)]
    out = run_cli([*common, "--judge-rate", "10"]).stdout
    # 4 prefixes x (quality: 10 pairs x 2 orders + safety: 5) = 100 calls; 10 s against 2 s of work.
    assert "judge calls: 100" in out and "2.000 s of trainer work" in out
    assert "judge replicas per trainer replica for <= 10%: 5 with" in out
    with FaultServer(reply="{decision}") as server:
        server.control(reply="1")
        out = run_cli([*common, "--measure", server.url]).stdout
    assert "measured:" in out and "judgments/s" in out and "replicas per trainer replica" in out
