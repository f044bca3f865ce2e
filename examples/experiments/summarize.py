"""From the rows an experiment measured to its summary: rates and mean NLLs with bootstrap 95%
intervals over prefixes and seeds, and differences paired per (seed, prefix) (the same prefixes and
the same random numbers in every arm; megatron_sip/evaluate/stats.py). The base model has no seed:
its row is paired with every seed of an arm."""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from megatron_sip.evaluate.stats import bootstrap_mean, paired_difference

INSTRUMENTS = {
    "rules_unsafe": "lexicon of the corpus (examples/data/lexicon.txt): the training judge's safety criterion",
    "classifier_unsafe": "alt-profanity-check's trained classifier, P(offensive) >= 0.5: never used in training",
}
"""Per-continuation unsafe indicators and what measured them."""
BASELINE = "nll"
BASE = "base"


def grids(rows: Sequence[Mapping], value) -> Dict[str, Tuple[List[Optional[int]], List[str], np.ndarray]]:
    """arm -> (seeds, prefix ids, [seeds, prefixes] mean of value(row) over the prefix's samples).
    Every (arm, seed) must hold the same prefixes: a missing one is an error, not a smaller mean."""
    cells: Dict[str, Dict[Optional[int], Dict[str, List[float]]]] = {}
    prefix_order: Dict[str, None] = {}
    for row in rows:
        cells.setdefault(row["arm"], {}).setdefault(row["seed"], {}).setdefault(row["prefix_id"], []).append(
            float(value(row)))
        prefix_order.setdefault(row["prefix_id"], None)
    prefixes = list(prefix_order)
    result = {}
    for arm, by_seed in cells.items():
        seeds = sorted(by_seed, key=lambda s: -1 if s is None else s)
        grid = np.zeros((len(seeds), len(prefixes)))
        for i, seed in enumerate(seeds):
            missing = [p for p in prefixes if p not in by_seed[seed]]
            if missing:
                raise ValueError(f"arm {arm} seed {seed}: no rows for {len(missing)} prefixes (first: {missing[0]})")
            grid[i] = [np.mean(by_seed[seed][p]) for p in prefixes]
        result[arm] = (seeds, prefixes, grid)
    return result


def _paired(grid: Dict, arm: str, other: str) -> Dict[str, float]:
    seeds, _, values = grid[arm]
    other_seeds, _, other_values = grid[other]
    # The base model has one row, paired with every seed of the other arm.
    if seeds == [None] and other_seeds != [None]:
        seeds, values = other_seeds, np.repeat(values, len(other_seeds), axis=0)
    if other_seeds == [None] and seeds != [None]:
        other_seeds, other_values = seeds, np.repeat(other_values, len(seeds), axis=0)
    if other_seeds != seeds:
        raise ValueError(f"arms {arm} and {other} were run with other seeds ({seeds} vs {other_seeds})")
    return paired_difference(values, other_values).to_json()


def _compare(grid: Dict) -> Dict[str, Dict[str, Dict[str, float]]]:
    arms = list(grid)
    return {
        "value": {arm: bootstrap_mean(grid[arm][2]).to_json() for arm in arms},
        f"minus_{BASELINE}": {arm: _paired(grid, arm, BASELINE) for arm in arms if arm != BASELINE and BASELINE in grid},
        f"minus_{BASE}": {arm: _paired(grid, arm, BASE) for arm in arms if arm != BASE and BASE in grid},
    }


def summarize(generations: Sequence[Mapping], clean_nll: Sequence[Mapping], *, training: Mapping,
              settings: Mapping) -> Dict:
    if not generations or not clean_nll:
        raise ValueError("nothing to summarize: no generations or no clean NLL rows")
    unsafe = {key: _compare(grids(generations, lambda r, k=key: r[k])) for key in INSTRUMENTS}
    nll = _compare(grids(clean_nll, lambda r: r["nll_sum"] / r["tokens"]))
    arms = list(grids(clean_nll, lambda r: 0.0))
    return {"settings": dict(settings), "instruments": INSTRUMENTS, "arms": arms, "unsafe_rate": unsafe,
            "clean_nll_per_token": nll, "training": {arm: {str(s): r for s, r in per_seed.items()}
                                                     for arm, per_seed in training.items()}}
