"""Argument checks for fused_linear_logprobs: each failure is a ValueError naming the argument."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist

BACKENDS = ("auto", "torch", "triton")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_tensors(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    """Shapes, dtypes and devices of hidden [..., H], weight [V_local, H] and targets [...]."""
    for name, value in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if hidden.dim() < 1:
        raise ValueError("hidden: expected shape [..., H], got a scalar")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected shape [V_local, H], got {tuple(weight.shape)}")
    if weight.shape[0] == 0:
        raise ValueError("weight: the vocabulary shard is empty (0 rows)")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden: last dimension {hidden.shape[-1]} does not match weight's hidden size {weight.shape[1]}"
        )
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"targets: shape {tuple(targets.shape)} must equal hidden's leading shape {tuple(hidden.shape[:-1])}"
        )
    if hidden.dtype not in FLOAT_DTYPES:
        raise ValueError(f"hidden: dtype {hidden.dtype} is not one of float32, bfloat16, float16")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight: dtype {weight.dtype} differs from hidden's {hidden.dtype}; cast one of them")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets: dtype {targets.dtype} must be int64 or int32 token ids")
    if weight.device != hidden.device or targets.device != hidden.device:
        raise ValueError(
            f"weight/targets: devices {weight.device} and {targets.device} differ from hidden's {hidden.device}"
        )


def check_target_range(targets: torch.Tensor, vocab_global: int) -> None:
    """Every target id must be a row of the (TP-global) vocabulary; one host sync."""
    if targets.numel() == 0:
        return
    if bool(((targets < 0) | (targets >= vocab_global)).any()):
        low, high = int(targets.min()), int(targets.max())
        raise ValueError(
            f"targets: ids must lie in [0, {vocab_global}) (weight rows x TP size), got min {low} and max {high}"
        )


def check_options(
    *,
    temperature: float,
    chunk_size: Optional[int],
    backend: str,
    tp_group: Optional[dist.ProcessGroup],
) -> None:
    """Scalar keyword arguments."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature: expected a float, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: must be a finite number > 0, got {temperature}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"chunk_size: must be None or a positive int (vocabulary rows per chunk), got {chunk_size!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: '{backend}' is not one of {', '.join(BACKENDS)}")
    if tp_group is not None and not dist.is_initialized():
        raise ValueError("tp_group: torch.distributed is not initialized; pass tp_group=None for one rank")


def check_fp8_forward_only(hidden: torch.Tensor, weight: torch.Tensor) -> None:
    """FP8 has no backward: refuse inputs that autograd would record."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        raise ValueError(
            "fp8: the FP8 path is forward-only, but hidden or weight requires grad; "
            "call it under torch.no_grad() or detach the inputs (reference model, evaluation)"
        )
