"""Samples -> micro-batch tensors in Megatron's language-modelling layout.

Legend: B = samples in the micro-batch, S = padded input length, N = suffix length.

A row is `prefix + continuation` (the continuation: the original suffix, the stored rewrite, or a
rollout), right-padded so positions start at 0 for every row. As in Megatron's GPTDataset,
`tokens` are the inputs (the row without its last token) and `labels` the next tokens (the row
without its first), so `loss_mask[b, t]` weighs the prediction of `labels[b, t]`. The loss mask
is 1 exactly where the label is a continuation token: log p(continuation | prefix) is
`sum_t logp(labels[b, t]) * loss_mask[b, t]`. Causal attention never lets a real token see the
padding that follows it, so no attention mask is needed.

For the `nll` objective, `SIPBatch.lm_loss_mask_BS` is 1 on every real label (prefix and suffix):
plain next-token training on the same tokens the SIP objectives see, which is what the paper's
"continued pretraining on the same data" baseline does. `suffix.loss_mask_BS` gives the suffix-only
variant (token budget matched to SIP's). Field names follow the trainer's `TokenBatch`
(`tokens_BS`, `labels_BS`, `loss_mask_BS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from megatron_sip.data.dataset import SIPSample


@dataclass
class LMBatch:
    """Prefix + continuation rows, right-padded, inputs and next-token labels."""

    tokens_BS: torch.Tensor
    """int64 [B, S]: input ids (row[:-1]), padded with pad_id."""
    labels_BS: torch.Tensor
    """int64 [B, S]: target ids (row[1:]), padded with pad_id."""
    loss_mask_BS: torch.Tensor
    """float32 [B, S]: 1 where the label is a continuation token."""
    position_ids_BS: torch.Tensor
    """int64 [B, S]: 0..S-1 in every row."""
    prefix_lengths_B: torch.Tensor
    """int64 [B]: prefix tokens of each row (tokens[b, :P] is the prefix)."""
    continuation_lengths_B: torch.Tensor
    """int64 [B]: continuation tokens of each row (0 for a row without one)."""


def pack_sequences(prefixes: Sequence[np.ndarray], continuations: Sequence[np.ndarray], *,
                   pad_id: int, seq_length: Optional[int] = None) -> LMBatch:
    """Rows `prefixes[b] + continuations[b]` in the layout above.

    seq_length: S to pad to (static shapes); None = the longest row minus one.
    """
    assert len(prefixes) == len(continuations)
    prefix_len_B = np.array([len(p) for p in prefixes], dtype=np.int64)
    cont_len_B = np.array([len(c) for c in continuations], dtype=np.int64)
    assert (prefix_len_B >= 1).all(), "every row needs a prefix token to predict from"
    row_len_B = prefix_len_B + cont_len_B
    needed = int(row_len_B.max()) - 1 if len(prefixes) else 0
    if seq_length is None:
        seq_length = needed
    if seq_length < needed:
        raise ValueError(f"seq_length {seq_length} is shorter than the longest row ({needed} inputs)")
    rows_BL = np.full((len(prefixes), seq_length + 1), pad_id, dtype=np.int64)
    for b, (prefix, continuation) in enumerate(zip(prefixes, continuations)):
        rows_BL[b, : prefix_len_B[b]] = prefix
        rows_BL[b, prefix_len_B[b]: row_len_B[b]] = continuation
    # Label t is row token t + 1: it is a continuation token for P - 1 <= t < P + C - 1.
    t_S = np.arange(seq_length)
    loss_mask_BS = (t_S >= prefix_len_B[:, None] - 1) & (t_S < row_len_B[:, None] - 1)
    return LMBatch(
        tokens_BS=torch.from_numpy(rows_BL[:, :-1].copy()),
        labels_BS=torch.from_numpy(rows_BL[:, 1:].copy()),
        loss_mask_BS=torch.from_numpy(loss_mask_BS.astype(np.float32)),
        position_ids_BS=torch.arange(seq_length, dtype=torch.int64).expand(len(prefixes), -1).clone(),
        prefix_lengths_B=torch.from_numpy(prefix_len_B),
        continuation_lengths_B=torch.from_numpy(cont_len_B),
    )


def real_label_mask(batch: LMBatch) -> torch.Tensor:
    """float32 [B, S]: 1 on every real label (prefix and continuation), 0 on padding."""
    t_S = torch.arange(batch.tokens_BS.shape[1])
    row_len_B = batch.prefix_lengths_B + batch.continuation_lengths_B
    return (t_S[None, :] < (row_len_B[:, None] - 1)).to(torch.float32)


@dataclass
class SIPBatch:
    """A micro-batch of SIP samples: the suffix candidate, the stored rewrite, and identity."""

    suffix: LMBatch
    """prefix + original suffix (N tokens); `suffix.loss_mask_BS` covers the suffix targets."""
    lm_loss_mask_BS: torch.Tensor
    """float32 [B, S]: 1 on every real label of `suffix` (the nll objective's mask)."""
    rewrite: Optional[LMBatch]
    """prefix + stored rewrite; rows without one have no continuation (all-zero loss mask);
    None when no row has one."""
    has_rewrite_B: torch.Tensor
    """bool [B]."""
    dataset_ids_B: torch.Tensor
    """int64 [B]: index of each sample's dataset in the blend."""
    doc_ids_B: torch.Tensor
    """int64 [B]: document index within its dataset."""
    splits_B: torch.Tensor
    """int64 [B]: position of the first suffix token in the document."""
    judgments_B: Dict[str, torch.Tensor]
    """name -> float32 [B] stored rollout-free judgments; NaN where none is stored."""

    @property
    def size(self) -> int:
        return int(self.doc_ids_B.shape[0])

    def prefix_tokens(self, b: int) -> torch.Tensor:
        """int64 [P]: the prefix of row b."""
        return self.suffix.tokens_BS[b, : int(self.suffix.prefix_lengths_B[b])]

    def suffix_tokens(self, b: int) -> torch.Tensor:
        """int64 [N]: the original suffix of row b."""
        start = int(self.suffix.prefix_lengths_B[b]) - 1
        return self.suffix.labels_BS[b, start: start + int(self.suffix.continuation_lengths_B[b])]


def collate_sip(samples: Sequence[SIPSample], *, pad_id: int,
                seq_length: Optional[int] = None) -> SIPBatch:
    """A `SIPBatch` of `samples` (use as a DataLoader `collate_fn` through functools.partial)."""
    prefixes = [s.prefix for s in samples]
    suffix = pack_sequences(prefixes, [s.suffix for s in samples], pad_id=pad_id,
                            seq_length=seq_length)
    has_rewrite = [s.rewrite is not None for s in samples]
    rewrite = None
    if any(has_rewrite):
        empty = np.zeros(0, dtype=np.int64)
        rewrite = pack_sequences(prefixes, [s.rewrite if s.rewrite is not None else empty
                                            for s in samples], pad_id=pad_id, seq_length=seq_length)
    return SIPBatch(
        suffix=suffix,
        lm_loss_mask_BS=real_label_mask(suffix),
        rewrite=rewrite,
        has_rewrite_B=torch.tensor(has_rewrite, dtype=torch.bool),
        dataset_ids_B=torch.tensor([s.dataset_id for s in samples], dtype=torch.int64),
        doc_ids_B=torch.tensor([s.doc_id for s in samples], dtype=torch.int64),
        splits_B=torch.tensor([s.split for s in samples], dtype=torch.int64),
        judgments_B=_collate_judgments(samples),
    )


def _collate_judgments(samples: Sequence[SIPSample]) -> Dict[str, torch.Tensor]:
    names: List[str] = sorted({name for s in samples for name in s.judgments})
    return {name: torch.tensor([s.judgments.get(name, float("nan")) for s in samples],
                               dtype=torch.float32) for name in names}
