"""Evaluation metrics on constructed votes: win rate over both orders, intervals, majority votes."""

from __future__ import annotations

import math

import pytest

from megatron_sip.evaluate import metrics
from megatron_sip.evaluate.metrics import PairVotes


def _pairs(checkpoint_first, baseline_first, n: int = 10):
    return [PairVotes(tuple(checkpoint_first), tuple(baseline_first)) for _ in range(n)]


def test_a_judge_that_always_prefers_the_checkpoint_gives_one() -> None:
    # The checkpoint wins when shown first (vote 1) and when shown second (vote 0 for the first).
    estimate = metrics.win_rate(_pairs([1.0, 1.0], [0.0, 0.0]))
    assert estimate.value == 1.0 and estimate.n == 10 and estimate.ci_high == 1.0
    assert metrics.win_rate(_pairs([0.0], [1.0])).value == 0.0


def test_both_orders_cancel_a_judge_that_always_answers_first() -> None:
    pairs = _pairs([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert metrics.win_rate(pairs).value == 0.5
    assert metrics.first_position_rate(pairs) == 1.0
    assert metrics.order_consistency(pairs) == 0.0  # each order names the other model


def test_orders_weigh_equally_whatever_their_valid_votes() -> None:
    # Three votes shown first, one shown second: pooling them would give 0.75, not 0.5.
    assert metrics.pair_outcome(PairVotes((1.0, 1.0, 1.0), (1.0,))) == 0.5


def test_ties_count_half() -> None:
    assert metrics.win_rate(_pairs([0.5], [0.5])).value == 0.5
    assert metrics.win_rate(_pairs([1.0, 0.0], [1.0, 0.0])).value == 0.5
    mixed = [PairVotes((1.0,), (0.0,)), PairVotes((0.5,), (0.5,))]
    assert metrics.win_rate(mixed).value == 0.75


def test_a_prefix_missing_an_order_is_a_failure_not_a_loss() -> None:
    pairs = [PairVotes((1.0,), (0.0,)), PairVotes((), (0.0,)), PairVotes((1.0,), ())]
    estimate = metrics.win_rate(pairs)
    assert (estimate.value, estimate.n, estimate.num_failed) == (1.0, 1, 2)
    assert metrics.win_rate([PairVotes((), ())]).value is None


def test_interval_width_shrinks_with_n() -> None:
    widths = []
    for n in (10, 100, 1000):
        low, high = metrics.wilson_interval(0.7, n)
        assert low < 0.7 < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.06


def test_wilson_interval_closed_forms() -> None:
    z2 = metrics.Z_95 ** 2
    low, high = metrics.wilson_interval(0.0, 20)  # no success: [0, z^2 / (n + z^2)]
    assert low == 0.0 and high == pytest.approx(z2 / (20 + z2))
    low, high = metrics.wilson_interval(0.5, 50)  # symmetric around one half
    assert low + high == pytest.approx(1.0)
    with pytest.raises(ValueError):
        metrics.wilson_interval(0.5, 0)


def test_safety_is_a_majority_vote_per_generation() -> None:
    assert metrics.majority((1.0, 1.0, 0.0)) == 1.0
    assert metrics.majority((0.0, 0.0, 1.0)) == 0.0
    assert metrics.majority((1.0, 0.0)) == 0.5
    assert metrics.majority(()) is None
    estimate = metrics.safety_rate([(1.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0,), ()])
    assert estimate.value == pytest.approx(2 / 3) and estimate.n == 3 and estimate.num_failed == 1


def test_factuality_is_the_mean_vote() -> None:
    assert metrics.mean_score([(1.0, 0.5), (0.0,)]).value == pytest.approx(0.375)


def test_nll_is_per_token_with_an_interval_over_prefixes() -> None:
    estimate = metrics.per_token_mean([20.0, 40.0, 30.0], [10, 10, 10])
    assert estimate.value == pytest.approx(3.0) and estimate.n == 3
    half = metrics.Z_95 * 1.0 / math.sqrt(3)  # per-prefix means 2, 4, 3: sample std 1
    assert (estimate.ci_low, estimate.ci_high) == (pytest.approx(3.0 - half), pytest.approx(3.0 + half))
    single = metrics.per_token_mean([5.0], [2])
    assert single.value == 2.5 and single.ci_low is None
