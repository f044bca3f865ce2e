"""One optimizer step through Megatron-Core's pipeline schedule, and the reduction of what the
loss functions reported into global numbers for logging."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Sequence

import torch
import torch.distributed as dist

from megatron_sip.loss import masked_nll
from megatron_sip.model.logprob_head import LogprobHead
from megatron_sip.parallel import ParallelContext
from megatron_sip.train.batch import TokenBatch
from megatron_sip.train.setup import TrainState


@dataclass(frozen=True)
class StepResult:
    reports: Dict[str, List[float]]
    """Each reported quantity as [global sum, global count]."""
    loss: float
    """Global mean of the `loss_key` report (NaN when nothing was trained on)."""
    grad_norm: float
    update_applied: bool
    fwd_bwd_s: float = 0.0
    optimizer_s: float = 0.0
    trained: bool = True
    """False when the loss had nothing to count (every prefix skipped)."""


@dataclass(frozen=True)
class StepOutcome:
    """What an objective's step tells the loop."""

    loss: float
    grad_norm: float
    update_applied: bool
    samples: int
    """Samples (prefixes) consumed from the data, over all DP ranks."""
    tokens: int
    """Tokens trained on, over all DP ranks (for tokens/s)."""
    metrics: Dict[str, Any] = field(default_factory=dict)
    trained: bool = True
    """False when nothing was trained on (not a non-finite loss)."""


def nll_forward_step(head: LogprobHead, data_iterator: Any, model: Any):
    """Megatron forward step for plain next-token training (bind `head` with functools.partial)."""
    batch: TokenBatch = next(data_iterator)
    token_nll_BS = head(model, batch.tokens_BS, batch.position_ids_BS, batch.labels_BS, batch.loss_mask_BS)
    return token_nll_BS, partial(masked_nll, batch.loss_mask_BS)


def train_step(state: TrainState, ctx: ParallelContext, micro_batches: Sequence[Any], *,
               forward_step: Callable, seq_length: int, micro_batch_size: int,
               report_keys: Sequence[str], loss_key: str) -> StepResult:
    """Forward-backward over the micro-batches, then the optimizer step unless the loss is
    NaN/inf (then the update is skipped and the gradients dropped)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    state.scheduler.step(increment=1)  # a skipped update still counts as a step of the schedule
    started = time.perf_counter()
    for chunk in state.model:
        chunk.zero_grad_buffer()
    state.optimizer.zero_grad()
    reported = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(micro_batches),
        model=state.model,
        num_microbatches=len(micro_batches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=False,
    )
    reports = reduce_reports(reported, ctx, report_keys)
    fwd_bwd_s = time.perf_counter() - started
    total, count = reports[loss_key]
    loss = total / count if count else float("nan")
    if not count or not math.isfinite(loss):
        # Nothing to learn from (every prefix skipped), or a NaN/inf loss: drop the gradients.
        for chunk in state.model:
            chunk.zero_grad_buffer()
        return StepResult(reports, loss, float("nan"), False, fwd_bwd_s, trained=bool(count))
    started = time.perf_counter()
    update_applied, grad_norm, _ = state.optimizer.step()
    return StepResult(reports, loss, float(grad_norm or 0.0), bool(update_applied), fwd_bwd_s,
                      time.perf_counter() - started)


def forward_only(model: List[Any], micro_batches: Sequence[Any], *, forward_step: Callable,
                 seq_length: int, micro_batch_size: int) -> List[Dict[str, torch.Tensor]]:
    """Run the schedule without backward (reference model, evaluation); the loss functions'
    reports of this rank, on the last pipeline stage."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    with torch.no_grad():
        return get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(micro_batches), model=model,
            num_microbatches=len(micro_batches), seq_length=seq_length,
            micro_batch_size=micro_batch_size, forward_only=True)


def reduce_reports(reported: Sequence[Dict[str, torch.Tensor]], ctx: ParallelContext,
                   keys: Sequence[str]) -> Dict[str, List[float]]:
    """Sum [sum, count] pairs over micro-batches and data-parallel ranks, on every rank.

    Only the last pipeline stage has losses, and its TP ranks hold identical copies, so exactly
    one rank per data-parallel replica contributes; a world all-reduce then sums the replicas.
    """
    totals = torch.zeros(len(keys), 2, dtype=torch.float64)
    if ctx.is_last_stage and ctx.tp_rank == 0:
        for report in reported:
            for row, key in enumerate(keys):
                if key in report:
                    totals[row] += report[key].detach().to("cpu", torch.float64)
    if ctx.world_size > 1:
        buffer = totals.to(ctx.device)
        dist.all_reduce(buffer)
        totals = buffer.cpu()
    return {key: totals[row].tolist() for row, key in enumerate(keys)}


def mean_of(reports: Dict[str, List[float]], key: str) -> float:
    total, count = reports[key]
    return total / count if count else float("nan")
