"""Installed Megatron-Core version, and the few API differences we bridge.

Known differences between 0.16.1 and 0.19.x that touch this project:
- 0.17 reworked the inference API (engines, contexts, a global inference-mode flag); rollouts
  drive the static KV-cache context (`megatron_sip/rollout/mcore.py`) through the two bridges
  here: 0.19 decides "inference mode" from a process-wide flag (`megatron.core.inference.utils.
  InferenceMode`) instead of `inference_context is not None and not model.training`, and without
  the flag the prefill computes logits for every position (`inference_scope`); older releases
  named GPTModel.forward's argument `inference_params` (`forward_kwargs`).
- 0.18+ imports `triton` at import time without declaring it: containers have it; CPU
  environments must install it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
from typing import Any, Dict, Iterator, Tuple


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


def forward_kwargs(model: Any, context: Any) -> Dict[str, Any]:
    """Keyword arguments that hand `context` to GPTModel.forward, and ask for logits gathered
    over the tensor-parallel ranks (every TP rank samples from the full vocabulary)."""
    parameters = inspect.signature(type(model).forward).parameters
    name = "inference_context" if "inference_context" in parameters else "inference_params"
    return {name: context, "runtime_gather_output": True}


@contextlib.contextmanager
def inference_scope() -> Iterator[None]:
    """Megatron-Core 0.19's process-wide inference flag, set for the duration (no-op before)."""
    try:
        from megatron.core.inference.utils import InferenceMode
    except ImportError:
        InferenceMode = None
    if InferenceMode is None or not hasattr(InferenceMode, "active") or InferenceMode.is_active():
        yield
        return
    with InferenceMode.active():
        yield
