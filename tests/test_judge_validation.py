"""Judge validation: accuracy, label accuracy, first-position rate and order consistency on
constructed judgments with known answers; the recorder under the real judge; the shipped
validation set and the command's checks of labels."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import pytest

from megatron_sip.evaluate.metrics import first_position_rate, order_consistency, wilson_interval
from megatron_sip.judges import validation
from megatron_sip.judges.config import JudgeConfig
from megatron_sip.judges.judge import AsyncJudge
from megatron_sip.judges.types import Candidate, JudgeGroup
from tests.launch import run_cli


def pointwise_line(good, bad, *, criterion="safety"):
    return {"criterion": criterion, "preferred": 1, "dispreferred": 0, "scores": {criterion: [bad, good]}}


def pairwise_line(good_first_votes, bad_first_votes):
    """Preferred = candidate 0; the outcome for 0 averages both orders as the judge does."""
    outcome = 0.5 * (sum(good_first_votes) / len(good_first_votes) + 1 - sum(bad_first_votes) / len(bad_first_votes))
    return {"criterion": "quality", "preferred": 0, "dispreferred": 1, "pair_outcomes": [[0, 1, outcome]],
            "pair_votes": {"quality": [[0, 1, list(good_first_votes), list(bad_first_votes)]]}}


def test_pointwise_accuracy_counts_ties_half_and_failures_apart():
    lines = [pointwise_line(1.0, 0.0), pointwise_line(0.9, 0.2), pointwise_line(0.3, 0.6),
             pointwise_line(0.7, 0.7), pointwise_line(None, 0.1)]
    (check,) = validation.validate(lines, ["safety"])
    assert check.accuracy.value == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert (check.accuracy.n, check.accuracy.num_failed) == (4, 1)
    assert (check.accuracy.ci_low, check.accuracy.ci_high) == pytest.approx(wilson_interval(2.5 / 4, 4))
    # Label side of 0.5: good 1.0 ok, bad 0.0 ok; 0.9 ok, 0.2 ok; 0.3 wrong, 0.6 wrong; 0.7 ok, 0.7 wrong; 0.1 ok.
    assert check.label_accuracy.value == pytest.approx(6 / 9)
    assert (check.label_accuracy.n, check.label_accuracy.num_failed) == (9, 1)
    assert check.first_position is None and check.order_consistency is None


def test_a_judge_that_always_picks_the_first_shown_is_at_chance():
    lines = [pairwise_line([1.0], [1.0]) for _ in range(10)]
    (check,) = validation.validate(lines, ["quality"])
    assert check.accuracy.value == 0.5
    assert check.first_position.value == 1.0 and check.first_position.n == 20
    assert check.order_consistency.value == 0.0 and check.order_consistency.n == 10


def test_an_order_free_judge_agrees_with_itself():
    lines = [pairwise_line([1.0], [0.0])] * 6 + [pairwise_line([0.0], [1.0])] * 2
    (check,) = validation.validate(lines, ["quality"])
    assert check.accuracy.value == 0.75
    assert check.first_position.value == 0.5
    assert check.order_consistency.value == 1.0


def test_soft_votes_match_the_evaluation_metrics():
    lines = [pairwise_line([0.8, 0.6], [0.7]), pairwise_line([0.4], [0.55]), pairwise_line([0.9], [0.2])]
    (check,) = validation.validate(lines, ["quality"])
    pairs = [validation.ordered_votes(line, "quality") for line in lines]
    assert check.first_position.value == pytest.approx(first_position_rate(pairs))
    assert check.order_consistency.value == pytest.approx(order_consistency(pairs))
    # outcomes for the preferred: 0.5*(0.7+0.3)=0.5 (tie), 0.5*(0.4+0.45)<0.5, 0.5*(0.9+0.8)>0.5
    assert check.accuracy.value == pytest.approx((0.5 + 0 + 1) / 3)


def test_labels_hold_only_for_their_criterion():
    lines = [pointwise_line(1.0, 0.0, criterion="factuality")]
    lines[0]["scores"]["safety"] = [1.0, 0.0]
    assert [c.criterion for c in validation.validate(lines, ["safety", "factuality"])] == ["factuality"]
    unlabelled_criterion = {k: v for k, v in lines[0].items() if k != "criterion"}
    assert len(validation.validate([unlabelled_criterion], ["safety", "factuality"])) == 2


class FirstShownEngine:
    """A programmatic judge with total position bias: every pairwise vote goes to the first text."""

    async def ask(self, asks, *, deadline_s):
        return [(1.0,) for _ in asks]

    def counters(self):
        return {}

    async def aclose(self):
        return None


def test_recorder_returns_both_orders_of_each_pair_judged():
    recorder = validation.PairVoteRecorder(FirstShownEngine())
    judge = AsyncJudge(recorder, JudgeConfig(backend="rules", criteria=["quality"]))
    group = JudgeGroup("p", (Candidate("a", "suffix"), Candidate("b"), Candidate("c")))
    (result,) = asyncio.run(judge.judge([group]))
    assert result.pair_outcomes == {(0, 1): 0.5, (0, 2): 0.5, (1, 2): 0.5}
    votes = recorder.pop_pair_votes(group)
    assert votes == {"quality": [[0, 1, [1.0], [1.0]], [0, 2, [1.0], [1.0]], [1, 2, [1.0], [1.0]]]}
    assert recorder.pop_pair_votes(group) == {}, "read votes are forgotten"


def test_shipped_validation_set_is_what_the_script_builds(repo_root):
    sys.path.insert(0, str(repo_root / "examples" / "data" / "validation"))
    try:
        import build_validation
    finally:
        sys.path.pop(0)
    built = build_validation.build(seed=17, count=80)
    lexicon = re.compile(r"\b(idiot|moron|imbecile|scumbag|halfwit|dimwit|nitwit|numbskull|bonehead|cretin|"
                         r"buffoon|lowlife|dunce|blockhead|airhead|nincompoop|pea-brain|dolt|worthless|"
                         r"brainless|pathetic|shut up|get lost)\b", re.IGNORECASE)
    facts = {f["sentence"] for f in json.loads((repo_root / "examples/data/facts.json").read_text())}
    for criterion, groups in built.items():
        shipped = [json.loads(line) for line in (repo_root / f"examples/data/validation/{criterion}.jsonl").open()]
        assert [g["id"] for g in groups] == [g["id"] for g in shipped]
        assert [g["candidates"] for g in groups] == [g["candidates"] for g in shipped]
        for group in shipped:
            good, bad = (group["candidates"][group[k]]["text"] for k in ("preferred", "dispreferred"))
            if criterion == "safety":
                assert not lexicon.search(group["prefix"] + good) and lexicon.search(bad)
            elif criterion == "quality":
                assert good == group["reference"] and sorted(bad.split()) != sorted(good.split()) or \
                    group["corruption"] == "shuffled" and sorted(bad.split()) == sorted(good.split()) != bad.split()
            else:
                assert good.strip() in facts and bad.strip() not in facts
    assert {g["corruption"] for g in built["quality"]} == {"shuffled", "repeated"}


def test_rules_quality_end_to_end_is_order_free(repo_root, tmp_path):
    summary = tmp_path / "summary.json"
    done = run_cli(["judge", "--config", "examples/tiny_cpu.yaml", "judge.backend=rules", "judge.criteria=[quality]",
                    "--input", "examples/data/validation/quality.jsonl", "--output", str(tmp_path / "out.jsonl"),
                    "--summary", str(summary)])
    quality = json.loads(summary.read_text())["criteria"]["quality"]
    assert quality["first_position_rate"]["value"] == 0.5 and quality["first_position_rate"]["n"] == 160
    assert quality["order_consistency"]["value"] == 1.0
    assert "quality: accuracy" in done.stdout and "first-position rate 0.500" in done.stdout
    committed = json.loads((repo_root / "examples/data/validation/results/rules_quality.json").read_text())
    assert committed["criteria"]["quality"] == quality


@pytest.mark.parametrize("label, culprit", [
    ('"preferred": 2, "dispreferred": 0', "'preferred' must be a candidate index"),
    ('"preferred": 1, "dispreferred": 1', "name the same candidate"),
    ('"preferred": 0, "dispreferred": 1, "criterion": "style"', "'criterion' 'style'"),
])
def test_bad_labels_are_one_line_errors_naming_the_line(tmp_path, label, culprit):
    from megatron_sip.commands.judge import read_groups
    from megatron_sip.errors import InputError

    bad = tmp_path / "groups.jsonl"
    bad.write_text('{"prefix": "p", "candidates": ["a", "b"]}\n{"prefix": "p", "candidates": ["a", "b"], '
                   + label + "}\n")
    with pytest.raises(InputError) as info:
        list(read_groups(bad, needs_reference=False))
    message = str(info.value)
    assert message.startswith(f"{bad}:2: ") and culprit in message and "\n" not in message


def test_readme_table_is_rendered_from_the_committed_results(repo_root):
    table = subprocess.run([sys.executable, str(repo_root / "examples/data/validation/table.py")],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert table.count("\n") >= 6, "rules x 3, classifier, SmolLM2 x 3"
    assert table in (repo_root / "README.md").read_text()
    assert table in (repo_root / "docs/judge_validation.md").read_text()
