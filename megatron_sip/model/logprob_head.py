"""Token log-probs from the last hidden states, inside Megatron's GPTModel, without full logits.

GPTModel ends with `logits = output_layer(hidden)` and, given labels, per-token cross-entropy over
those [S, B, V] logits. Within `fused_logprob_head(model)`, the output layer instead hands its
input and weight through, and the loss is `-fused_linear_logprobs(hidden, weight, labels)`
(megatron_sip.kernels), evaluated only at positions whose label is >= 0: the loss passes the
suffix targets and never the prefix. Outside the context the model is untouched (generation still
gets real logits). The kernel all-reduces the hidden-state gradient over the TP group itself, the
job the output layer's column-parallel backward would otherwise do.

Legend: S sequence, B batch, H hidden, V_local this rank's vocabulary rows.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Optional

import torch

from megatron_sip.model.build import unwrap_model

if TYPE_CHECKING:  # annotation only: the config schema imports model.config
    from megatron_sip.config import SIPConfig

IGNORE_LABEL = -1
"""Labels below zero are not scored (their position's NLL is 0)."""


class _HiddenAndWeight(NamedTuple):
    hidden_SBH: torch.Tensor
    weight_VH: torch.Tensor


@contextlib.contextmanager
def fused_logprob_head(model: Any, *, tp_group: Optional[Any], backend: str = "auto",
                       fp8: bool = False) -> Iterator[None]:
    """While active, `model(tokens, positions, None, labels=L)` returns -log p(L) per position
    ([B, S], float32), 0 where L < 0. Only valid on the last pipeline stage's model chunk."""
    from megatron_sip.kernels import fused_linear_logprobs

    gpt = unwrap_model(model)
    layer = getattr(gpt, "output_layer", None)
    if layer is None:  # not the last pipeline stage: the chunk returns hidden states anyway
        yield
        return

    def output_forward(input_: torch.Tensor, weight: Optional[torch.Tensor] = None, **_: Any):
        return _HiddenAndWeight(input_, layer.weight if weight is None else weight), None

    def token_nll(labels_BS: torch.Tensor, logits: _HiddenAndWeight) -> torch.Tensor:
        hidden_BSH = logits.hidden_SBH.transpose(0, 1)
        scored_BS = labels_BS >= 0
        nll_BS = torch.zeros(labels_BS.shape, dtype=torch.float32, device=labels_BS.device)
        logprobs = fused_linear_logprobs(hidden_BSH[scored_BS], logits.weight_VH, labels_BS[scored_BS],
                                         tp_group=tp_group if _tp_size(tp_group) > 1 else None,
                                         backend=backend, fp8=fp8)
        return nll_BS.index_put((scored_BS,), -logprobs)

    layer.forward = output_forward
    gpt.compute_language_model_loss = token_nll
    try:
        yield
    finally:
        del layer.forward
        del gpt.compute_language_model_loss


def _tp_size(group: Optional[Any]) -> int:
    if group is None:
        return 1
    return torch.distributed.get_world_size(group=group)


def masked_labels(labels_BS: torch.Tensor, loss_mask_BS: torch.Tensor) -> torch.Tensor:
    """Labels with IGNORE_LABEL where the loss mask is 0."""
    return torch.where(loss_mask_BS > 0, labels_BS, torch.full_like(labels_BS, IGNORE_LABEL))


class LogprobHead:
    """How a forward step turns the model's output into per-token NLL of the scored labels."""

    def __init__(self, *, impl: str, tp_group: Optional[Any], backend: str = "auto", fp8: bool = False) -> None:
        self.impl, self.tp_group, self.backend, self.fp8 = impl, tp_group, backend, fp8

    def __call__(self, model: Any, tokens_BS: torch.Tensor, position_ids_BS: torch.Tensor,
                 labels_BS: torch.Tensor, loss_mask_BS: torch.Tensor) -> torch.Tensor:
        """[B, S] -log p(label) (0 where the mask is 0 with the fused head), or the previous
        stage's hidden states on a non-last pipeline stage."""
        if self.impl == "megatron":
            return model(tokens_BS, position_ids_BS, None, labels=labels_BS)
        with fused_logprob_head(model, tp_group=self.tp_group, backend=self.backend, fp8=self.fp8):
            return model(tokens_BS, position_ids_BS, None, labels=masked_labels(labels_BS, loss_mask_BS))


def logprob_head(sip: "SIPConfig", *, tp_group: Optional[Any], fp8: bool = False) -> LogprobHead:
    """The head the `sip` section asks for (`sip.logprobs_impl`, `sip.logprobs_backend`)."""
    return LogprobHead(impl=sip.logprobs_impl, tp_group=tp_group, backend=sip.logprobs_backend, fp8=fp8)
