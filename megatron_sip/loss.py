"""SIP losses in Megatron-Core's `forward_step -> (output, partial(loss_func, ...))` form.

Every loss function returns `(loss_sum, count, report)`. Megatron sums `count` over micro-batches
and data-parallel ranks and divides the gradients by it (`calculate_per_token_loss=True`), so a
step optimises the mean over the global batch whatever the micro-batch layout. `report` maps
names to detached `[sum, count]` pairs that the trainer all-reduces for logging.

A SIP micro-batch holds b prefixes with R rows each (R = 2 for dpo: chosen then rejected; R = 1
for rf_nll). `mode_B` says what each prefix trains on (see `PrefixMode`); rows of skipped
prefixes are fully masked, so shapes stay static for pipeline parallelism.

Legend: B prefixes in the micro-batch, R rows per prefix, S sequence length.
"""

from __future__ import annotations

import enum
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

LossOutput = Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]


class PrefixMode(enum.IntEnum):
    """What one prefix of a SIP micro-batch trains on."""

    SKIP = 0
    """No loss (judging failed or tied and sip.on_judge_failure=skip)."""
    PREFERENCE = 1
    """DPO on (row 0 = chosen, row 1 = rejected); RF-NLL on row 0 = best."""
    NLL_FALLBACK = 2
    """Plain NLL on row 0 (sip.on_judge_failure=nll_on_suffix / nll_on_rewrite)."""


def _pair(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    # clone: the schedule may scale the returned loss in place.
    return torch.stack([total.detach().clone().float(), count.detach().clone().float()])


def sequence_logprobs(token_nll_NS: torch.Tensor, loss_mask_NS: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p over the masked positions of each row, and the number of those positions."""
    mask = loss_mask_NS.to(torch.float32)
    return -(token_nll_NS.float() * mask).sum(-1), mask.sum(-1)


def masked_nll(loss_mask_BS: torch.Tensor, token_nll_BS: torch.Tensor) -> LossOutput:
    """Next-token NLL summed over the positions where `loss_mask_BS` is 1 (the `nll` baseline).

    `token_nll_BS` is -log p(label_t | tokens_<=t) per position, as Megatron's GPTModel returns
    it when given labels. The mean over the global batch is sum(nll * mask) / sum(mask).
    """
    mask = loss_mask_BS.to(torch.float32)
    loss_sum = (token_nll_BS.float() * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    return loss_sum, num_tokens, {"nll": _pair(loss_sum, num_tokens)}


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and margin (Rafailov et al. 2023), sequence log-probs as inputs:

        margin = beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)))
        loss   = -log sigmoid(margin)

    Equal chosen and rejected give loss = log 2 (= -logsigmoid(0)).
    """
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin), margin


def sip_loss(mode_B: torch.Tensor, loss_mask_BRS: torch.Tensor, ref_logprobs_BR: torch.Tensor,
             token_nll: torch.Tensor, *, objective: str, beta: float, nll_weight: float) -> LossOutput:
    """The SIP objective for one micro-batch; `token_nll` is [B*R, S] from the model.

    Per prefix (count = prefixes not skipped):
    - dpo, PREFERENCE:   dpo_loss(chosen, rejected) + nll_weight * mean token NLL of chosen
    - rf_nll, PREFERENCE: mean token NLL of the best candidate (reward-filtered NLL)
    - NLL_FALLBACK:      mean token NLL of row 0
    Token NLL is averaged per sequence so that each prefix weighs the same as in DPO.
    """
    num_prefixes, rows, seq = loss_mask_BRS.shape
    logp_BR, ntok_BR = sequence_logprobs(token_nll.view(num_prefixes * rows, seq), loss_mask_BRS.view(-1, seq))
    logp_BR, ntok_BR = logp_BR.view(num_prefixes, rows), ntok_BR.view(num_prefixes, rows)
    mean_nll_B = -logp_BR[:, 0] / ntok_BR[:, 0].clamp(min=1.0)
    preference = mode_B == PrefixMode.PREFERENCE
    fallback = mode_B == PrefixMode.NLL_FALLBACK
    zero = token_nll.new_zeros((), dtype=torch.float32)
    report: Dict[str, torch.Tensor] = {}
    if objective == "dpo":
        pair_loss_B, margin_B = dpo_loss(logp_BR[:, 0], logp_BR[:, 1], ref_logprobs_BR[:, 0], ref_logprobs_BR[:, 1], beta)
        pref_loss_B = pair_loss_B + nll_weight * mean_nll_B
        num_pairs = preference.sum()
        report["dpo_loss"] = _pair(torch.where(preference, pair_loss_B, zero).sum(), num_pairs)
        report["dpo_margin"] = _pair(torch.where(preference, margin_B, zero).sum(), num_pairs)
        report["dpo_accuracy"] = _pair((preference & (margin_B > 0)).sum(), num_pairs)
        report["chosen_nll"] = _pair(torch.where(preference, mean_nll_B, zero).sum(), num_pairs)
    elif objective == "rf_nll":
        pref_loss_B = mean_nll_B
        report["rf_nll"] = _pair(torch.where(preference, mean_nll_B, zero).sum(), preference.sum())
    else:
        raise ValueError(f"sip_loss: objective '{objective}' is not dpo or rf_nll")
    report["fallback_nll"] = _pair(torch.where(fallback, mean_nll_B, zero).sum(), fallback.sum())
    per_prefix_B = torch.where(preference, pref_loss_B, torch.where(fallback, mean_nll_B, zero))
    count = (preference | fallback).sum().to(torch.int)
    loss_sum = per_prefix_B.sum()
    report["loss"] = _pair(loss_sum, count)
    trained_B = (preference | fallback).to(torch.float32)
    report["tokens"] = _pair((loss_mask_BRS.sum(dim=(1, 2)) * trained_B).sum(), torch.ones(()))
    return loss_sum, count, report
