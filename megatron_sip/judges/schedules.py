"""Which candidate pairs the quality criterion judges.

- round_robin: all K(K-1)/2 pairs (the paper's default); score = mean outcome.
- pivot: every candidate against the pivot (the suffix), K-1 pairs (the paper's cheap ablation).
- knockout (ours): DPO only needs the best and the worst candidate, so we look for those two
  rather than a full ranking. (1) Random pairs: K/2 matches. (2) Winners play a single-elimination
  bracket for the best, losers one for the worst, side by side: 3K/2 - 2 pairs in all. (3) While
  the budget (`judge.knockout_budget` of the K(K-1)/2 pairs) lasts, a Bradley-Terry fit on all
  outcomes predicts each candidate's round-robin score, and the unjudged pairs that matter most
  for whoever could still overtake the leader (or undercut the laggard) are judged, a few per
  round, until both ends are separated by 3 standard deviations. Scores are the predicted round-robin scores, so
  best and worst are chosen as round robin would choose them. bench/bench_judge_schedule.py
  measures how often they agree.

A schedule runs as a generator: it yields a list of pairs (i < j), receives the outcomes of
everything judged so far, and stops when done; pairs already known are never asked again.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Dict, Generator, List, Optional, Sequence, Tuple

import numpy as np

from megatron_sip.judges.ranking import Outcomes, completed_copeland, mean_scores, predicted_wins

Pair = Tuple[int, int]
Plan = Generator[List[Pair], Outcomes, None]
_CONTENDERS = 3
_SETTLED = 0.00135  # Phi(-3): a rival 3 sd behind is not worth a judgment


def pair_key(a: int, b: int) -> Pair:
    return (a, b) if a < b else (b, a)


def share_of(a: int, b: int, outcomes: Outcomes) -> Optional[float]:
    """Share of votes for a over b, whichever way the pair is keyed."""
    value = outcomes.get(pair_key(a, b))
    if value is None:
        return None
    return value if a < b else 1.0 - value


class ScheduleRun:
    """One group's schedule: call `next_pairs(outcomes)` until it returns [] then `scores`."""

    def __init__(self, plan: Plan, scorer: Callable[[Outcomes], List[Optional[float]]]) -> None:
        self._plan = plan
        self._scorer = scorer
        self._started = False
        self._done = False

    def next_pairs(self, outcomes: Outcomes) -> List[Pair]:
        while not self._done:
            try:
                pairs = self._plan.send(dict(outcomes)) if self._started else next(self._plan)
            except StopIteration:
                self._done = True
                break
            self._started = True
            missing = sorted({pair_key(a, b) for a, b in pairs} - set(outcomes))
            if missing:
                return missing
        return []

    def scores(self, outcomes: Outcomes) -> List[Optional[float]]:
        return self._scorer(outcomes)


def make_schedule(name: str, *, num_candidates: int, pivot: int, rng: random.Random,
                  budget: float) -> ScheduleRun:
    k = num_candidates
    if name == "round_robin":
        return ScheduleRun(_fixed([(i, j) for i in range(k) for j in range(i + 1, k)]),
                           lambda o: mean_scores(k, o))
    if name == "pivot":
        return ScheduleRun(_fixed([pair_key(pivot, i) for i in range(k) if i != pivot]),
                           lambda o: mean_scores(k, o))
    if name == "knockout":
        max_pairs = max(math.floor(budget * k * (k - 1) / 2), bracket_pairs(k))
        return ScheduleRun(_knockout(k, rng, max_pairs), lambda o: _knockout_scores(k, o))
    raise ValueError(f"unknown schedule {name!r}")


def bracket_pairs(k: int) -> int:
    """Pairs of knockout's opening round and its two brackets: 3K/2 - 2 for even K."""
    return k // 2 + 2 * ((k + 1) // 2 - 1)


def _fixed(pairs: List[Pair]) -> Plan:
    yield pairs


def _knockout(k: int, rng: random.Random, max_pairs: int) -> Plan:
    order = list(range(k))
    rng.shuffle(order)
    opening = [(order[i], order[i + 1]) for i in range(0, k - 1, 2)]
    outcomes = yield opening
    winners, losers = [], []
    for a, b in opening:
        won, lost = _decide(a, b, outcomes, rng)
        winners.append(won)
        losers.append(lost)
    if k % 2:  # the odd one out sits in both brackets
        winners.append(order[-1])
        losers.append(order[-1])
    while len(winners) > 1 or len(losers) > 1:
        win_games, lose_games = _pairs_of(winners), _pairs_of(losers)
        outcomes = yield win_games + lose_games
        winners = _advance(winners, win_games, outcomes, rng, keep_winner=True)
        losers = _advance(losers, lose_games, outcomes, rng, keep_winner=False)
    # A few pairs per round: fewer rounds (latency) at a small cost in agreement.
    per_round = max(2, k // 4)
    while len(outcomes) < max_pairs:
        picks = _most_uncertain(k, outcomes, min(per_round, max_pairs - len(outcomes)))
        if not picks:
            return
        outcomes = yield picks


def _pairs_of(field: Sequence[int]) -> List[Pair]:
    return [(field[i], field[i + 1]) for i in range(0, len(field) - 1, 2)]


def _advance(field: List[int], games: List[Pair], outcomes: Outcomes, rng: random.Random,
             *, keep_winner: bool) -> List[int]:
    kept = [_decide(a, b, outcomes, rng)[0 if keep_winner else 1] for a, b in games]
    return kept + ([field[-1]] if len(field) % 2 else [])


def _decide(a: int, b: int, outcomes: Outcomes, rng: random.Random) -> Tuple[int, int]:
    """(winner, loser); a tie or a failed judgment is settled by a coin, for the bracket only."""
    share = share_of(a, b, outcomes)
    if share is None or share == 0.5:
        share = rng.random()
    return (a, b) if share > 0.5 else (b, a)


def _most_uncertain(k: int, outcomes: Outcomes, limit: int) -> List[Pair]:
    """Up to `limit` unjudged pairs that most help to settle the best and the worst.

    At each end, the leader is compared with its `_CONTENDERS - 1` closest rivals; a rival's
    chance to overtake, Phi(-gap / sd) under the Bradley-Terry completion, weighs the pairs
    of both rows by their outcome variance p(1-p) (x4 for the leader-rival match itself, which
    moves the gap twice). Budget thus goes to whichever end is less settled; ends already
    separated by 3 sd get none."""
    score_K, variance_K = completed_copeland(k, outcomes)
    p_KK, _, _ = predicted_wins(k, outcomes)
    ranked = [int(i) for i in np.argsort(-score_K, kind="stable")]
    weights: Dict[Pair, float] = {}
    for order in (ranked, ranked[::-1]):
        leader = order[0]
        for rival in order[1:_CONTENDERS]:
            spread = math.sqrt(variance_K[leader] + variance_K[rival])
            if spread == 0.0:
                continue
            overtake = _normal_cdf(-abs(score_K[leader] - score_K[rival]) / spread)
            if overtake < _SETTLED:
                continue
            for i in (leader, rival):
                for j in range(k):
                    key = pair_key(i, j)
                    if j == i or key in outcomes:
                        continue
                    weight = overtake * p_KK[i, j] * (1.0 - p_KK[i, j]) * (4.0 if j in (leader, rival) else 1.0)
                    weights[key] = max(weights.get(key, 0.0), weight)
    return [key for key, _ in sorted(weights.items(), key=lambda item: -item[1])[:limit]]


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _knockout_scores(k: int, outcomes: Outcomes) -> List[Optional[float]]:
    judged = mean_scores(k, outcomes)
    if k < 2:
        return judged
    score_K, _ = completed_copeland(k, outcomes)
    return [float(score_K[i]) if judged[i] is not None else None for i in range(k)]
