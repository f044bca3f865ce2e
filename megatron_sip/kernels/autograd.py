"""The autograd Function shared by both engines, with the tensor-parallel reductions.

Legend: T tokens, H hidden size, V vocabulary rows of this rank's shard.

Forward: the engine returns this shard's softmax statistics; they are all-reduced over the TP
group (shards.all_reduce) into lse_T and log p(y) = z_y - lse. Only hidden, weight, targets and
lse_T are saved: the backward recomputes the logits.

Backward, TP contract: with p = softmax over the global vocabulary,
    d log p(y_t) / d h_t = (W_{y_t} - sum_v p_tv W_v) / tau
sums over every shard, so each rank's partial grad_hidden is all-reduced over the TP group here,
in fp32, and every rank returns the full gradient (what TP=1 returns). grad_weight needs no
reduction: each rank owns its rows. A caller that already reduces the input gradient itself
(Megatron's ColumnParallelLinear does, in copy_to_tensor_model_parallel_region's backward) must
not route hidden through that as well, or the gradient is counted TP times; see docs/kernels.md.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist

from megatron_sip.kernels import shards


class LinearLogProbs(torch.autograd.Function):
    """(log p(y) [T], entropy [T] or empty) of softmax(hidden @ weight.T / temperature)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden_TH: torch.Tensor,
        weight_VH: torch.Tensor,
        local_targets_T: torch.Tensor,
        engine: Any,
        tp_group: Optional[dist.ProcessGroup],
        temperature: float,
        with_entropy: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        stats = engine.forward_stats(
            hidden_TH, weight_VH, local_targets_T, temperature=temperature, with_entropy=with_entropy
        )
        logprobs_T, lse_T, entropy_T = finish(stats, tp_group)
        ctx.save_for_backward(hidden_TH, weight_VH, local_targets_T, lse_T)
        ctx.engine, ctx.tp_group, ctx.temperature = engine, tp_group, temperature
        ctx.mark_non_differentiable(entropy_T)
        return logprobs_T, entropy_T

    @staticmethod
    def backward(ctx: Any, grad_logprobs_T: torch.Tensor, _grad_entropy: torch.Tensor) -> tuple:
        hidden_TH, weight_VH, local_targets_T, lse_T = ctx.saved_tensors
        grad_h_TH, grad_w_VH = ctx.engine.backward(
            hidden_TH,
            weight_VH,
            local_targets_T,
            lse_T,
            grad_logprobs_T.float(),
            temperature=ctx.temperature,
            with_weight_grad=ctx.needs_input_grad[1],
        )
        if ctx.tp_group is not None and dist.get_world_size(ctx.tp_group) > 1:
            dist.all_reduce(grad_h_TH, op=dist.ReduceOp.SUM, group=ctx.tp_group)
        grad_hidden = grad_h_TH.to(hidden_TH.dtype) if ctx.needs_input_grad[0] else None
        return grad_hidden, grad_w_VH, None, None, None, None, None


def finish(
    stats: shards.SoftmaxStats, tp_group: Optional[dist.ProcessGroup]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p(y), lse, entropy or an empty tensor) from this shard's statistics."""
    stats = shards.all_reduce(stats, tp_group)
    lse_T = shards.log_sum_exp(stats)
    logprobs_T = stats.target - lse_T
    entropy_T = shards.entropy(stats, lse_T) if stats.zexp is not None else lse_T.new_empty(0)
    return logprobs_T, lse_T, entropy_T
