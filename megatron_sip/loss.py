"""Loss functions in Megatron-Core's `forward_step -> (output, partial(loss_func, ...))` form.

Each returns `(loss_sum, count, report)`: Megatron sums `count` over micro-batches and
data-parallel ranks and divides the gradients by it (`calculate_per_token_loss=True`), so the
step optimises the mean over the whole global batch whatever the micro-batch layout.
`report` holds detached [sum, count] pairs that the trainer all-reduces for logging.

Legend: B micro-batch size, S sequence length.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch


def masked_nll(loss_mask_BS: torch.Tensor, token_nll_BS: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """Next-token NLL summed over the positions where `loss_mask_BS` is 1.

    `token_nll_BS` is -log p(label_t | tokens_<=t) per position, as Megatron's GPTModel returns
    it when given labels. The mean over the global batch is sum(nll * mask) / sum(mask).
    """
    mask = loss_mask_BS.to(token_nll_BS.dtype)
    loss_sum = (token_nll_BS.float() * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    # clone: the schedule may scale the returned loss in place.
    report = {"nll": torch.stack([loss_sum.detach().clone(), num_tokens.detach().float()])}
    return loss_sum, num_tokens, report
