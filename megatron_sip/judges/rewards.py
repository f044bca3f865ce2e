"""Per-candidate reward and the (best, worst) selection.

reward_k = sum over criteria c of judge.weights[c] * score_c,k (the paper adds the factuality
reward to the quality score and, in the safety setting, sums safety and quality). A candidate
with a failed score in any weighted criterion has no reward (None): a failure is never read as a
win or a loss. Best and worst are the highest and lowest rewards among the candidates that have
one; None when fewer than two have one or all are equal. Ties at the top (or bottom) are broken
by the group's seeded random stream, so no candidate kind is favoured systematically.
"""

from __future__ import annotations

import random
from typing import Mapping, Optional, Sequence, Tuple


def combine(scores: Mapping[str, Sequence[Optional[float]]], weights: Mapping[str, float],
            num_candidates: int) -> Tuple[Optional[float], ...]:
    rewards = []
    for k in range(num_candidates):
        total: Optional[float] = 0.0
        for name, values in scores.items():
            weight = weights.get(name, 1.0)
            if weight == 0.0:
                continue
            if values[k] is None:
                total = None
                break
            total += weight * values[k]
        rewards.append(total)
    return tuple(rewards)


def best_and_worst(rewards: Sequence[Optional[float]], rng: random.Random,
                   *, tolerance: float = 1e-9) -> Tuple[Optional[int], Optional[int]]:
    valid = [(k, r) for k, r in enumerate(rewards) if r is not None]
    if len(valid) < 2:
        return None, None
    high = max(r for _, r in valid)
    low = min(r for _, r in valid)
    if high - low <= tolerance:
        return None, None
    best = rng.choice([k for k, r in valid if r >= high - tolerance])
    worst = rng.choice([k for k, r in valid if r <= low + tolerance])
    return best, worst
