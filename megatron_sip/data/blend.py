"""Megatron's blend convention for `data.paths`: `[P]`, `[P1, P2]` or `[w1, P1, w2, P2, ...]`.

Parsed without touching the files (that happens when the datasets are built), so that
`megatron-sip config` can validate a config on a machine that does not hold the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from megatron_sip.errors import ConfigError

_FORMAT = "expected [PREFIX, ...] or [WEIGHT, PREFIX, WEIGHT, PREFIX, ...]"


@dataclass(frozen=True)
class Blend:
    """Dataset path prefixes and their relative weights (None = proportional to their sizes)."""

    prefixes: List[str]
    weights: Optional[List[float]]


def parse_blend(entries: Sequence[Any], *, key: str) -> Optional[Blend]:
    """The blend in `entries`, or None when empty; a ConfigError naming `key` when malformed."""
    if not entries:
        return None
    if all(isinstance(entry, str) and _as_weight(entry) is None for entry in entries):
        prefixes = [_prefix(entry, key, i) for i, entry in enumerate(entries)]
        return Blend(prefixes=prefixes, weights=None)
    if len(entries) % 2:
        raise ConfigError(key, f"{len(entries)} entries mix weights and prefixes; {_FORMAT}")
    weights, prefixes = [], []
    for i in range(0, len(entries), 2):
        weight = _as_weight(entries[i])
        if weight is None:
            raise ConfigError(f"{key}[{i}]", f"{entries[i]!r} is not a weight; {_FORMAT}")
        if not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"{key}[{i}]", f"weight {entries[i]!r} of {entries[i + 1]!r} must be "
                              "a positive number")
        weights.append(weight)
        prefixes.append(_prefix(entries[i + 1], key, i + 1))
    if len(prefixes) == 1:  # a single dataset is not blended: its weight means nothing
        return Blend(prefixes=prefixes, weights=None)
    return Blend(prefixes=prefixes, weights=weights)


def _as_weight(entry: Any) -> Optional[float]:
    """The entry as a weight: a number, or a string that parses as one (as Megatron accepts)."""
    if isinstance(entry, bool):
        return None
    if isinstance(entry, (int, float)):
        return float(entry)
    if isinstance(entry, str):
        try:
            return float(entry)
        except ValueError:
            return None
    return None


def _prefix(entry: Any, key: str, index: int) -> str:
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"{key}[{index}]", f"{entry!r} is not a dataset path prefix; {_FORMAT}")
    prefix = entry.strip()
    for suffix in (".bin", ".idx"):
        if prefix.endswith(suffix):
            raise ConfigError(f"{key}[{index}]", f"give the path prefix without '{suffix}': "
                              f"{prefix[: -len(suffix)]}")
    return prefix
