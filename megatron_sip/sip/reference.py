"""The DPO reference: a frozen copy of the policy, sharded like it, evaluated without grad.

It starts as the initial policy (or the checkpoint the run resumed from holds it) and, with
`sip.reference_refresh_steps = M > 0`, is replaced by the current policy every M steps.
"""

from __future__ import annotations

from functools import partial
from typing import Any, List, Sequence

import torch

from megatron_sip.config import Config
from megatron_sip.loss import sequence_logprobs
from megatron_sip.model.build import build_gpt_model, transformer_config
from megatron_sip.model.logprob_head import LogprobHead
from megatron_sip.parallel import ParallelContext
from megatron_sip.sip.batching import SIPMicroBatch
from megatron_sip.train.step import forward_only


class ReferenceModel:
    def __init__(self, cfg: Config, ctx: ParallelContext, policy: Any, *, head: LogprobHead) -> None:
        self.ctx = ctx
        self.head = head
        # Its own TransformerConfig: the policy's carries the training schedule's hooks.
        self.module = build_gpt_model(cfg.model, pre_process=ctx.is_first_stage, post_process=ctx.is_last_stage,
                                      config=transformer_config(cfg.model))
        self.module.requires_grad_(False)
        self.module.eval()
        self.refresh_from(policy)

    @torch.no_grad()
    def refresh_from(self, policy: Any) -> None:
        """Copy the policy's current weights (both are unwrapped GPTModel chunks)."""
        self.module.load_state_dict(policy.state_dict(), strict=True)

    def sequence_logprobs(self, micro_batches: Sequence[SIPMicroBatch], *, seq_length: int) -> List[torch.Tensor]:
        """[B, R] reference log-probs of each micro-batch's rows (zeros off the last stage, where
        no loss is computed)."""
        rows = micro_batches[0].tokens_NS.shape[0]
        reported = forward_only([self.module], micro_batches, forward_step=partial(_reference_forward_step, self.head),
                                seq_length=seq_length, micro_batch_size=rows)
        if not self.ctx.is_last_stage:
            return [torch.zeros(mb.mode_B.shape[0], mb.rows_per_prefix, device=mb.tokens_NS.device)
                    for mb in micro_batches]
        return [report["logprobs"].view(mb.mode_B.shape[0], mb.rows_per_prefix)
                for report, mb in zip(reported, micro_batches)]


def _reference_forward_step(head: LogprobHead, data_iterator: Any, model: Any):
    batch: SIPMicroBatch = next(data_iterator)
    token_nll_NS = head(model, batch.tokens_NS, batch.position_ids_NS, batch.labels_NS, batch.loss_mask_NS)
    return token_nll_NS, partial(_logprob_report, batch.loss_mask_NS)


def _logprob_report(loss_mask_NS: torch.Tensor, token_nll_NS: torch.Tensor):
    logprobs_N, _ = sequence_logprobs(token_nll_NS, loss_mask_NS)
    # Forward-only: no loss to minimise, only the per-row log-probs to hand back.
    return token_nll_NS.sum() * 0.0, torch.zeros((), dtype=torch.int), {"logprobs": logprobs_N.detach()}
