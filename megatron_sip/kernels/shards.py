"""Softmax statistics of vocabulary shards, and how shards combine into log-probs.

Legend: T tokens, S shards or splits of the vocabulary (on one device or over the TP group).

A shard r that holds the logits z_v, v in V_r, of one token reports
    max_r = max_v z_v,   sumexp_r = sum_v exp(z_v - max_r),
    zexp_r = sum_v exp(z_v - max_r) * z_v           (only when entropy is wanted),
    target_r = z_y if the target y is in V_r else 0.
With M = max_r max_r and scale_r = exp(max_r - M) the whole vocabulary has
    lse = M + log(sum_r scale_r sumexp_r),   log p(y) = sum_r target_r - lse,
    entropy = lse - E_p[z] = lse - (sum_r scale_r zexp_r) / (sum_r scale_r sumexp_r).
This is the same reduction as Megatron-Core's vocab-parallel cross-entropy (max, then sums).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist


class SoftmaxStats(NamedTuple):
    """Per-token statistics of a set of logits; every field is float32 with the same shape."""

    max: torch.Tensor
    """Largest logit (-inf for an empty shard)."""
    sumexp: torch.Tensor
    """Sum of exp(logit - max)."""
    target: torch.Tensor
    """Logit of the target token, 0 where the target is not in this shard."""
    zexp: Optional[torch.Tensor]
    """Sum of exp(logit - max) * logit; None when entropy is not wanted."""


def merge_splits(stats_S: SoftmaxStats) -> SoftmaxStats:
    """Combine statistics stacked along dim 0 (splits of one shard) into one set."""
    max_T = stats_S.max.amax(dim=0)
    scale_ST = _rescale(stats_S.max, max_T)
    zexp_T = None if stats_S.zexp is None else (stats_S.zexp * scale_ST).sum(dim=0)
    return SoftmaxStats(max_T, (stats_S.sumexp * scale_ST).sum(dim=0), stats_S.target.sum(dim=0), zexp_T)


def all_reduce(stats: SoftmaxStats, group: Optional[dist.ProcessGroup]) -> SoftmaxStats:
    """Combine this rank's shard statistics with the other ranks of `group` (two collectives)."""
    if group is None or dist.get_world_size(group) == 1:
        return stats
    max_T = stats.max.clone()
    dist.all_reduce(max_T, op=dist.ReduceOp.MAX, group=group)
    scale_T = _rescale(stats.max, max_T)
    # One SUM over the packed sums instead of one collective per field.
    fields = [stats.sumexp * scale_T, stats.target]
    if stats.zexp is not None:
        fields.append(stats.zexp * scale_T)
    packed_FT = torch.stack(fields)
    dist.all_reduce(packed_FT, op=dist.ReduceOp.SUM, group=group)
    zexp_T = packed_FT[2] if stats.zexp is not None else None
    return SoftmaxStats(max_T, packed_FT[0], packed_FT[1], zexp_T)


def log_sum_exp(stats: SoftmaxStats) -> torch.Tensor:
    """log sum_v exp(z_v) of complete (merged and reduced) statistics."""
    return stats.max + torch.log(stats.sumexp)


def entropy(stats: SoftmaxStats, lse_T: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(z) in nats from complete statistics that carry `zexp`."""
    assert stats.zexp is not None, "entropy needs statistics computed with zexp"
    return lse_T - stats.zexp / stats.sumexp


def vocab_start(vocab_local: int, group: Optional[dist.ProcessGroup]) -> int:
    """First global vocabulary id held by this rank (Megatron's contiguous equal shards)."""
    if group is None:
        return 0
    return dist.get_rank(group) * vocab_local


def vocab_global(vocab_local: int, group: Optional[dist.ProcessGroup]) -> int:
    """Vocabulary size over the whole TP group."""
    if group is None:
        return vocab_local
    return dist.get_world_size(group) * vocab_local


def _rescale(max_ST: torch.Tensor, max_T: torch.Tensor) -> torch.Tensor:
    # An empty shard has max = -inf and sumexp = 0: exp(-inf) = 0 keeps it out of the sums.
    return torch.exp(max_ST - max_T)
