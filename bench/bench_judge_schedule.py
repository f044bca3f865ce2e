"""How well cheap comparison schedules recover round robin's (best, worst) pair, and at what cost.

Each group is a table of recorded pairwise judgments (every pair, both orders, as a round-robin
judge would have produced them); every schedule reads the same table, so a disagreement is the
schedule's doing, not fresh judge noise. Round robin's best and worst are the candidates with the
highest / lowest mean outcome (any of them when tied); a schedule agrees when its best and its
worst are both among those. The `re-judged` rows give context: round robin against itself
when the same candidates are judged afresh (its own stability under the judge's noise).

Tables come from a simulated noisy judge (default) or from `--recorded FILE`: the output of
`megatron-sip judge` run with judge.schedule=round_robin (its `pair_outcomes`).
Simulated judge: latent quality q ~ N(0, 1) per candidate; one call shows (a, b) and prefers a with
probability sigmoid(beta * (q_a - q_b) + bias); bias is a position bias toward the first shown.
beta = 8 / 4 / 2 are a sharp / moderate / noisy judge (for two candidates 0.1 sd apart: 69% /
60% / 55% correct). Goal: >= 95% agreement at <= 30% of round robin's calls for K = 16.

    python bench/bench_judge_schedule.py [--groups 300] [--recorded out.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_sip.judges.ranking import Outcomes, mean_scores  # noqa: E402
from megatron_sip.judges.rewards import best_and_worst  # noqa: E402
from megatron_sip.judges.schedules import make_schedule  # noqa: E402

SCHEDULES = ("pivot", "knockout")
BETAS = {"sharp": 8.0, "moderate": 4.0, "noisy": 2.0}
POSITION_BIAS = 0.5
VOTES_PER_ORDER = 1


def simulated_table(k: int, beta: float, rng: random.Random,
                    quality: Optional[List[float]] = None) -> Outcomes:
    quality = quality or [rng.gauss(0.0, 1.0) for _ in range(k)]
    table: Outcomes = {}
    for i in range(k):
        for j in range(i + 1, k):
            wins = 0
            for _ in range(VOTES_PER_ORDER):
                wins += rng.random() < _sigmoid(beta * (quality[i] - quality[j]) + POSITION_BIAS)
                wins += rng.random() >= _sigmoid(beta * (quality[j] - quality[i]) + POSITION_BIAS)
            table[(i, j)] = wins / (2 * VOTES_PER_ORDER)
    return table


def recorded_tables(path: Path) -> List[Tuple[int, Outcomes]]:
    tables = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        k = len(record["candidates"])
        table = {(i, j): v for i, j, v in record["pair_outcomes"]}
        if len(table) == k * (k - 1) // 2:
            tables.append((k, table))
    return tables


def extremes(scores: List[Optional[float]]) -> Tuple[set, set]:
    valid = [s for s in scores if s is not None]
    high, low = max(valid), min(valid)
    return ({i for i, s in enumerate(scores) if s is not None and s >= high - 1e-9},
            {i for i, s in enumerate(scores) if s is not None and s <= low + 1e-9})


def run_schedule(name: str, k: int, table: Outcomes, seed: int) -> Tuple[Optional[int], Optional[int], int]:
    rng = random.Random(seed)
    run = make_schedule(name, num_candidates=k, pivot=0, rng=rng, budget=0.3)
    outcomes: Outcomes = {}
    while True:
        pairs = run.next_pairs(outcomes)
        if not pairs:
            break
        outcomes.update({p: table[p] for p in pairs})
    best, worst = best_and_worst(run.scores(outcomes), rng)
    return best, worst, len(outcomes)


def evaluate(tables: List[Tuple[int, Outcomes]]) -> Dict[str, Tuple[float, float]]:
    """schedule -> (agreement with round robin, pairs judged / round robin's pairs)."""
    result = {}
    for name in SCHEDULES:
        agree, pairs, full = 0, 0, 0
        for seed, (k, table) in enumerate(tables):
            best_set, worst_set = extremes(mean_scores(k, table))
            if len(best_set) == k:  # round robin itself has no pair (all tied): skip
                continue
            best, worst, used = run_schedule(name, k, table, seed)
            agree += best in best_set and worst in worst_set
            pairs += used
            full += k * (k - 1) // 2
        counted = sum(1 for k, t in tables if len(extremes(mean_scores(k, t))[0]) < k)
        result[name] = (agree / max(counted, 1), pairs / max(full, 1))
    return result


def rejudge_agreement(k: int, beta: float, groups: int, rng: random.Random) -> float:
    """Context for the numbers above: how often round robin agrees with itself when the same
    candidates are judged again (fresh judge noise), i.e. how stable its (best, worst) is."""
    agree = 0
    for _ in range(groups):
        quality = [rng.gauss(0.0, 1.0) for _ in range(k)]
        first = extremes(mean_scores(k, simulated_table(k, beta, rng, quality)))
        second = extremes(mean_scores(k, simulated_table(k, beta, rng, quality)))
        agree += rng.choice(sorted(second[0])) in first[0] and rng.choice(sorted(second[1])) in first[1]
    return agree / groups


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=500, help="simulated groups per (K, judge)")
    parser.add_argument("--recorded", type=Path, help="JSONL from `megatron-sip judge` with round_robin")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"{'judge':<22}{'K':>4}  {'schedule':<10}{'agreement':>10}{'call ratio':>12}")
    if args.recorded:
        tables = recorded_tables(args.recorded)
        for name, (agreement, ratio) in evaluate(tables).items():
            print(f"{'recorded':<22}{'-':>4}  {name:<10}{agreement:>10.3f}{ratio:>12.3f}")
    rng = random.Random(args.seed)
    verdict = None
    for label, beta in BETAS.items():
        for k in (4, 8, 16):
            tables = [(k, simulated_table(k, beta, rng)) for _ in range(args.groups)]
            rejudged = rejudge_agreement(k, beta, args.groups, rng)
            print(f"{label + f' (beta={beta:g})':<22}{k:>4}  {'re-judged':<10}{rejudged:>10.3f}{1.0:>12.3f}")
            for name, (agreement, ratio) in evaluate(tables).items():
                print(f"{label + f' (beta={beta:g})':<22}{k:>4}  {name:<10}{agreement:>10.3f}{ratio:>12.3f}")
                if name == "knockout" and k == 16 and label == "moderate":
                    verdict = (agreement, ratio)
    agreement, ratio = verdict
    ok = agreement >= 0.95 and ratio <= 0.30
    print(f"goal (K=16, moderate judge, knockout): agreement {agreement:.3f} >= 0.95 and call ratio "
          f"{ratio:.3f} <= 0.30: {'met' if ok else 'NOT met'}  ({time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    main()
