"""Paired bootstrap intervals over prefixes and seeds (megatron_sip/evaluate/stats.py) on cases
with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_sip.evaluate.stats import bootstrap_mean, paired_difference


def test_a_constant_difference_has_a_zero_width_interval():
    baseline = np.random.default_rng(0).uniform(size=(3, 40))
    interval = paired_difference(baseline + 0.25, baseline)
    assert (interval.value, interval.ci_low, interval.ci_high) == pytest.approx((0.25, 0.25, 0.25))
    assert interval.excludes_zero and (interval.num_seeds, interval.num_prefixes) == (3, 40)


def test_seeds_are_resampled():
    # Three seeds whose prefixes all agree: the only spread is between seeds. The mean of three
    # draws from {0, 0.2, 0.4} is 0 or 0.4 with probability 1/27 > 2.5% each, so the percentile
    # interval is exactly [0, 0.4].
    grid = np.repeat([[0.0], [0.2], [0.4]], 25, axis=1)
    interval = bootstrap_mean(grid)
    assert interval.value == pytest.approx(0.2)
    assert (interval.ci_low, interval.ci_high) == pytest.approx((0.0, 0.4))
    assert interval.excludes_zero is False


def test_one_seed_matches_the_normal_interval_of_a_mean():
    draws = np.random.default_rng(1).normal(0.3, 1.0, size=400)
    interval = bootstrap_mean(draws)
    half_width = 1.959964 * draws.std() / np.sqrt(draws.size)
    assert interval.ci_low == pytest.approx(draws.mean() - half_width, abs=0.1 * half_width)
    assert interval.ci_high == pytest.approx(draws.mean() + half_width, abs=0.1 * half_width)


def test_pairing_removes_the_spread_shared_by_both_arms():
    rng = np.random.default_rng(2)
    baseline = rng.uniform(0.0, 1.0, size=(3, 60))  # prefixes differ a lot, for both arms alike
    arm = baseline + 0.05 + rng.normal(0.0, 0.02, size=baseline.shape)
    paired = paired_difference(arm, baseline)
    assert paired.excludes_zero and paired.ci_low > 0.03 and paired.ci_high < 0.07
    apart_arm, apart_baseline = bootstrap_mean(arm), bootstrap_mean(baseline)
    assert apart_arm.ci_low < apart_baseline.ci_high, "unpaired, the two intervals overlap"


def coverage(num_seeds: int, num_prefixes: int) -> float:
    """Share of 200 simulated arm-vs-baseline comparisons with no true difference (independent
    noise in every cell) whose interval contains zero."""
    rng = np.random.default_rng(3)
    covered = 0
    for replicate in range(200):
        arm, baseline = rng.normal(0.0, 1.0, size=(2, num_seeds, num_prefixes))
        interval = paired_difference(arm, baseline, num_resamples=1000, seed=replicate)
        covered += interval.ci_low <= 0.0 <= interval.ci_high
    return covered / 200


def test_coverage_over_prefixes_is_near_95_percent():
    assert 0.90 <= coverage(1, 60) <= 0.99


def test_resampling_seeds_and_prefixes_is_conservative():
    # Noise in every (seed, prefix) cell shows up in both resampled margins, so the interval is
    # about sqrt(2) too wide (covers ~99%): too wide, not too narrow (module docstring).
    assert coverage(2, 60) >= 0.97


def test_same_inputs_same_interval():
    grid = np.random.default_rng(4).uniform(size=(2, 30))
    assert bootstrap_mean(grid, seed=7) == bootstrap_mean(grid, seed=7)


@pytest.mark.parametrize("arm, baseline, words", [
    (np.zeros((3, 10)), np.zeros((2, 10)), "arm (3, 10) and baseline (2, 10)"),
    ([[0.1, float("nan")]], [[0.1, 0.2]], "arm: holds non-finite"),
    ([], [], "arm: needs a non-empty"),
])
def test_bad_inputs_name_the_culprit(arm, baseline, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        paired_difference(arm, baseline)
