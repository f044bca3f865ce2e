"""Paired comparisons of two arms with bootstrap 95% intervals over prefixes and seeds.

Shapes: `_SP` = [seeds, prefixes]. `scores_SP[s, p]` is one arm's score on held-out prefix p in
seed s (e.g. the share of its sampled continuations of p judged safe, or its suffix NLL on p).

Pairing: both arms are scored on the same prefixes, and within a seed with the same random
numbers (evaluate --temperature draws the same samples for every model), so the comparison is
made per (seed, prefix): diff_SP = arm_SP - baseline_SP. Most of the variation between prefixes
(an easy prefix is easy for both arms) cancels in the difference, which is why a paired interval
is much narrower than two separate ones.

Interval: percentile bootstrap of the mean difference, resampling seeds and prefixes with
replacement (two-way: each replicate draws S seeds and P prefixes and averages diff over that
grid), `num_resamples` replicates from a seeded generator, so the same inputs always give the
same interval. Two caveats (the first measured in tests/test_evaluate_stats.py):
- noise of single (seed, prefix) cells enters both resampled margins, so with more than one seed
  the interval is too wide (about sqrt(2) when that noise dominates: 99% coverage, not 95%);
- the bootstrap sees a margin's spread with the factor (n - 1) / n: with 3 seeds it sees 2/3 of
  the seed-to-seed variance, from 3 values, so seed effects are underrated.
Claim a difference only where the interval excludes zero (`Interval.excludes_zero`).

Where this differs from the paper (arXiv 2601.21343): the paper reports point estimates (quality
win rates averaged over 8 judge seeds), with no interval; this project claims a difference only
where this interval excludes zero. Nothing uses the module yet (docs/judge_validation.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence

import numpy as np

NUM_RESAMPLES = 4000
"""Bootstrap replicates: the 2.5% and 97.5% percentiles move by well under 1% of the interval's
width between seeds of the generator at this count."""
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap 95% interval over the given seeds and prefixes."""

    value: float
    ci_low: float
    ci_high: float
    num_seeds: int
    num_prefixes: int

    @property
    def excludes_zero(self) -> bool:
        return excludes_zero(self.to_json())

    def to_json(self) -> Dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "num_seeds": self.num_seeds, "num_prefixes": self.num_prefixes}


def excludes_zero(interval: Mapping[str, float]) -> bool:
    """Whether an interval (an Interval's JSON: ci_low, ci_high) lies wholly on one side of 0."""
    return interval["ci_low"] > 0.0 or interval["ci_high"] < 0.0


def as_grid(scores: Sequence, *, name: str) -> np.ndarray:
    """Scores as a float64 [seeds, prefixes] array (a 1-D input is one seed); refuses empty or
    non-finite inputs, naming the argument."""
    grid = np.asarray(scores, dtype=np.float64)
    if grid.ndim == 1:
        grid = grid[None, :]
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"{name}: needs a non-empty [seeds, prefixes] grid, got shape {grid.shape}")
    if not np.all(np.isfinite(grid)):
        raise ValueError(f"{name}: holds non-finite values (a failed item must be dropped from every arm)")
    return grid


def bootstrap_mean(scores_SP: Sequence, *, num_resamples: int = NUM_RESAMPLES, seed: int = 0) -> Interval:
    """The mean over seeds and prefixes with its two-way percentile bootstrap interval."""
    grid = as_grid(scores_SP, name="scores")
    if num_resamples < 1:
        raise ValueError(f"num_resamples: must be >= 1, got {num_resamples}")
    means_R = resampled_means(grid, num_resamples=num_resamples, rng=np.random.default_rng(seed))
    tail = 100.0 * (1.0 - CONFIDENCE) / 2.0
    low, high = np.percentile(means_R, [tail, 100.0 - tail])
    return Interval(float(grid.mean()), float(low), float(high), grid.shape[0], grid.shape[1])


def paired_difference(arm_SP: Sequence, baseline_SP: Sequence, *, num_resamples: int = NUM_RESAMPLES,
                      seed: int = 0) -> Interval:
    """Mean of arm - baseline per (seed, prefix), with the bootstrap interval of that mean."""
    arm, baseline = as_grid(arm_SP, name="arm"), as_grid(baseline_SP, name="baseline")
    if arm.shape != baseline.shape:
        raise ValueError(f"arm {arm.shape} and baseline {baseline.shape} must be scored on the same "
                         "[seeds, prefixes] grid to be paired")
    return bootstrap_mean(arm - baseline, num_resamples=num_resamples, seed=seed)


def resampled_means(grid_SP: np.ndarray, *, num_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `num_resamples` grids drawn with replacement: seeds, then prefixes (same prefixes
    for every drawn seed, as the arms' prefixes are the same in every seed)."""
    num_seeds, num_prefixes = grid_SP.shape
    seeds_RS = rng.integers(0, num_seeds, size=(num_resamples, num_seeds))
    prefixes_RP = rng.integers(0, num_prefixes, size=(num_resamples, num_prefixes))
    # Averaging over a drawn grid = averaging, over the drawn seeds, each seed's mean over the
    # drawn prefixes; counting prefix draws avoids materialising [R, S, P].
    prefix_counts_RP = np.zeros((num_resamples, num_prefixes))
    np.add.at(prefix_counts_RP, (np.arange(num_resamples)[:, None], prefixes_RP), 1.0)
    seed_means_RS = prefix_counts_RP @ grid_SP.T / num_prefixes
    return np.take_along_axis(seed_means_RS, seeds_RS, axis=1).mean(axis=1)
