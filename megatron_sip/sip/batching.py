"""Selections -> SIP micro-batches for Megatron's schedule.

Each prefix contributes R rows (R = 2 for dpo: chosen, rejected; R = 1 for rf_nll), interleaved
as [prefix 0 row 0, prefix 0 row 1, prefix 1 row 0, ...] so that the loss can view the model's
[B*R, S] output as [B, R, S]. Rows that do not train (skipped prefixes, the rejected row of an
NLL fallback) keep their prefix but no continuation, so their loss mask is empty and every
micro-batch has the same static shape.

Legend: B prefixes per micro-batch, R rows per prefix, S sequence length.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from megatron_sip.data.collate import pack_sequences
from megatron_sip.loss import PrefixMode
from megatron_sip.sip.candidates import CandidateSet, continuation_for
from megatron_sip.sip.selection import Selection


@dataclass(frozen=True)
class SIPMicroBatch:
    tokens_NS: torch.Tensor
    """int64 [B*R, S] inputs."""
    labels_NS: torch.Tensor
    """int64 [B*R, S] next-token targets."""
    loss_mask_NS: torch.Tensor
    """float32 [B*R, S]: 1 on the continuation's targets."""
    mode_B: torch.Tensor
    """int64 [B]: PrefixMode per prefix."""
    rows_per_prefix: int
    ref_logprobs_BR: Optional[torch.Tensor] = None
    """float32 [B, R]: the reference model's sequence log-probs (dpo), filled by the reference pass."""

    @property
    def position_ids_NS(self) -> torch.Tensor:
        rows, seq = self.tokens_NS.shape
        return torch.arange(seq, device=self.tokens_NS.device).unsqueeze(0).expand(rows, seq)

    @property
    def loss_mask_BRS(self) -> torch.Tensor:
        rows, seq = self.loss_mask_NS.shape
        return self.loss_mask_NS.view(rows // self.rows_per_prefix, self.rows_per_prefix, seq)

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask_NS.sum().item())

    def to(self, device: torch.device) -> "SIPMicroBatch":
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **moved)

    def with_reference(self, ref_logprobs_BR: torch.Tensor) -> "SIPMicroBatch":
        return dataclasses.replace(self, ref_logprobs_BR=ref_logprobs_BR)


def build_micro_batches(candidate_sets: Sequence[CandidateSet], selections: Sequence[Selection], *,
                        micro_batch_size: int, rows_per_prefix: int, seq_length: int,
                        pad_id: int) -> List[SIPMicroBatch]:
    """Cut this rank's prefixes into micro-batches of `micro_batch_size` prefixes."""
    assert len(candidate_sets) == len(selections) and len(selections) % micro_batch_size == 0
    batches = []
    for first in range(0, len(selections), micro_batch_size):
        prefixes: List[np.ndarray] = []
        continuations: List[np.ndarray] = []
        modes: List[int] = []
        for cands, sel in zip(candidate_sets[first:first + micro_batch_size], selections[first:first + micro_batch_size]):
            rows = _rows(cands, sel, rows_per_prefix)
            prefixes.extend([np.asarray(cands.prefix, dtype=np.int64)] * rows_per_prefix)
            continuations.extend(rows)
            modes.append(int(sel.mode))
        packed = pack_sequences(prefixes, continuations, pad_id=pad_id, seq_length=seq_length)
        batches.append(SIPMicroBatch(packed.tokens_BS, packed.labels_BS, packed.loss_mask_BS,
                                     torch.tensor(modes, dtype=torch.int64), rows_per_prefix))
    return batches


def _rows(cands: CandidateSet, sel: Selection, rows_per_prefix: int) -> List[np.ndarray]:
    empty = np.zeros(0, dtype=np.int64)
    rows = [empty] * rows_per_prefix
    if sel.mode == PrefixMode.PREFERENCE:
        rows[0] = continuation_for(cands, sel.chosen)
        if rows_per_prefix > 1:
            rows[1] = continuation_for(cands, sel.rejected)
    elif sel.mode == PrefixMode.NLL_FALLBACK:
        rows[0] = continuation_for(cands, sel.chosen)
    return rows
