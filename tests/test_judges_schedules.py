"""Comparison schedules, ranking and reward selection, on exact and noisy simulated judges."""

from __future__ import annotations

import random

import pytest

from megatron_sip.judges.ranking import mean_scores
from megatron_sip.judges.rewards import best_and_worst, combine
from megatron_sip.judges.schedules import bracket_pairs, make_schedule, pair_key


def play(name: str, quality, *, known=None, budget: float = 0.3, seed: int = 0):
    """Run a schedule against a judge that prefers the higher `quality` (0.5 on ties)."""
    k = len(quality)
    run = make_schedule(name, num_candidates=k, pivot=0, rng=random.Random(seed), budget=budget)
    outcomes = dict(known or {})
    asked = []
    while True:
        pairs = run.next_pairs(outcomes)
        if not pairs:
            return run.scores(outcomes), asked
        assert not set(pairs) & set(outcomes), "a known pair was asked again"
        asked += pairs
        for i, j in pairs:
            outcomes[(i, j)] = 1.0 if quality[i] > quality[j] else 0.0 if quality[i] < quality[j] else 0.5


def test_round_robin_and_pivot_ask_the_expected_pairs():
    scores, asked = play("round_robin", [3, 1, 2, 0])
    assert len(asked) == 6 and scores == [1.0, 1 / 3, 2 / 3, 0.0]
    scores, asked = play("pivot", [3, 1, 2, 0])
    assert sorted(asked) == [(0, 1), (0, 2), (0, 3)]
    assert scores[0] == 1.0 and scores[1:] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("k", [2, 3, 5, 8, 16])
def test_knockout_finds_the_true_best_and_worst_within_budget(k):
    for seed in range(5):
        quality = random.Random(seed).sample(range(100), k)
        scores, asked = play("knockout", quality, seed=seed)
        assert len(asked) <= max(int(0.3 * k * (k - 1) / 2), bracket_pairs(k))
        assert scores.index(max(scores)) == quality.index(max(quality))
        assert scores.index(min(scores)) == quality.index(min(quality))


def test_known_pairs_are_used_and_not_asked():
    known = {(0, 1): 1.0}
    scores, asked = play("round_robin", [2, 1, 0], known=known)
    assert (0, 1) not in asked and len(asked) == 2 and scores[0] == 1.0


def test_failed_outcomes_count_neither_way():
    assert mean_scores(3, {(0, 1): None, (0, 2): 1.0, (1, 2): None}) == [1.0, None, 0.0]


def test_rewards_combine_weights_and_propagate_failures():
    scores = {"quality": [1.0, 0.5, None], "safety": [0.0, 1.0, 1.0]}
    assert combine(scores, {"quality": 1.0, "safety": 2.0}, 3) == (1.0, 2.5, None)
    assert combine(scores, {"quality": 0.0, "safety": 1.0}, 3) == (0.0, 1.0, 1.0)


def test_best_and_worst_handle_ties_and_failures():
    rng = random.Random(0)
    assert best_and_worst([0.5, 0.5, 0.5], rng) == (None, None)
    assert best_and_worst([None, 1.0], rng) == (None, None)
    assert best_and_worst([0.2, None, 0.9], rng) == (2, 0)
    picks = {best_and_worst([1.0, 1.0, 0.0], random.Random(s))[0] for s in range(20)}
    assert picks == {0, 1}, "top ties are broken at random, not by position"


def test_pair_key_orders():
    assert pair_key(3, 1) == (1, 3)
