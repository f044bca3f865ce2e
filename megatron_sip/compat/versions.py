"""Installed Megatron-Core version, and the few API differences we bridge.

Known differences between 0.16.1 and 0.19.x that touch this project:
- 0.17 reworked the inference API (engines, contexts, a global inference-mode flag); rollouts
  drive the static KV-cache context, adapted in `megatron_sip/rollout/mcore.py`.
- 0.18+ imports `triton` at import time without declaring it: containers have it; CPU
  environments must install it.
"""

from __future__ import annotations

import importlib.metadata
from typing import Tuple


def _parse(version: str) -> Tuple[int, int, int]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)  # type: ignore[return-value]


def _installed_version() -> Tuple[int, int, int]:
    try:
        return _parse(importlib.metadata.version("megatron-core"))
    except importlib.metadata.PackageNotFoundError:
        return (0, 0, 0)


MCORE_VERSION: Tuple[int, int, int] = _installed_version()


def mcore_at_least(major: int, minor: int, patch: int = 0) -> bool:
    """Whether the installed Megatron-Core is at least this version."""
    return MCORE_VERSION >= (major, minor, patch)
