"""Scores from a partial set of pairwise outcomes.

Legend: K = candidates; `outcomes[(i, j)]` (i < j) = share of votes for i over j, None = failed.

- `mean_scores`: a candidate's mean outcome over the comparisons it took part in (the paper's
  round-robin score; also used for pivot).
- `bradley_terry`: strengths s_K maximising sum_ij w_ij log sigmoid(s_i - s_j) - lambda/2 |s|^2
  (a weak Gaussian prior keeps undefeated candidates finite), by damped Newton steps.
- `completed_copeland`: the round-robin score a candidate would get if the missing comparisons
  went as the Bradley-Terry fit predicts: (sum of known outcomes + sum of predicted) / (K - 1).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

Outcomes = Dict[Tuple[int, int], Optional[float]]

_PRIOR = 0.1
_NEWTON_STEPS = 30


def mean_scores(num_candidates: int, outcomes: Outcomes) -> List[Optional[float]]:
    totals = [0.0] * num_candidates
    counts = [0] * num_candidates
    for (i, j), value in outcomes.items():
        if value is None:
            continue
        totals[i] += value
        totals[j] += 1.0 - value
        counts[i] += 1
        counts[j] += 1
    return [t / c if c else None for t, c in zip(totals, counts)]


def win_matrix(num_candidates: int, outcomes: Outcomes) -> Tuple[np.ndarray, np.ndarray]:
    """wins_KK[i, j] = share of i over j, played_KK[i, j] = 1 where judged (both directions)."""
    wins_KK = np.zeros((num_candidates, num_candidates))
    played_KK = np.zeros((num_candidates, num_candidates))
    for (i, j), value in outcomes.items():
        if value is None:
            continue
        wins_KK[i, j], wins_KK[j, i] = value, 1.0 - value
        played_KK[i, j] = played_KK[j, i] = 1.0
    return wins_KK, played_KK


def bradley_terry(wins_KK: np.ndarray, played_KK: np.ndarray) -> np.ndarray:
    strength_K = np.zeros(len(wins_KK))
    for _ in range(_NEWTON_STEPS):
        p_KK = _sigmoid(strength_K[:, None] - strength_K[None, :])
        gradient_K = (wins_KK - played_KK * p_KK).sum(1) - _PRIOR * strength_K
        curvature_K = (played_KK * p_KK * (1.0 - p_KK)).sum(1) + _PRIOR
        strength_K = strength_K + gradient_K / curvature_K
        strength_K -= strength_K.mean()
    return strength_K


def predicted_wins(num_candidates: int, outcomes: Outcomes) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_KK predicted win probabilities, known wins_KK, played_KK)."""
    wins_KK, played_KK = win_matrix(num_candidates, outcomes)
    strength_K = bradley_terry(wins_KK, played_KK)
    return _sigmoid(strength_K[:, None] - strength_K[None, :]), wins_KK, played_KK


def completed_copeland(num_candidates: int, outcomes: Outcomes) -> Tuple[np.ndarray, np.ndarray]:
    """(expected round-robin score_K, its variance_K from the unjudged pairs)."""
    if num_candidates < 2:
        return np.zeros(num_candidates), np.zeros(num_candidates)
    p_KK, wins_KK, played_KK = predicted_wins(num_candidates, outcomes)
    unknown_KK = 1.0 - played_KK
    np.fill_diagonal(unknown_KK, 0.0)
    total_K = wins_KK.sum(1) + (unknown_KK * p_KK).sum(1)
    variance_K = (unknown_KK * p_KK * (1.0 - p_KK)).sum(1)
    return total_K / (num_candidates - 1), variance_K / (num_candidates - 1) ** 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
