"""Micro-batches as the loss sees them, and the synthetic source used when no data is configured.

Legend: B micro-batch size, S sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch


@dataclass(frozen=True)
class TokenBatch:
    """A right-padded micro-batch for next-token training."""

    tokens_BS: torch.Tensor
    """Input ids."""
    labels_BS: torch.Tensor
    """Next-token targets (tokens shifted left by one)."""
    loss_mask_BS: torch.Tensor
    """1.0 where the target counts in the loss."""

    @property
    def position_ids_BS(self) -> torch.Tensor:
        batch, seq = self.tokens_BS.shape
        return torch.arange(seq, device=self.tokens_BS.device).unsqueeze(0).expand(batch, seq)

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask_BS.sum().item())

    def to(self, device: torch.device) -> "TokenBatch":
        return TokenBatch(self.tokens_BS.to(device), self.labels_BS.to(device), self.loss_mask_BS.to(device))


def synthetic_micro_batches(*, seed: int, step: int, global_batch_size: int, micro_batch_size: int,
                            dp_rank: int, dp_size: int, seq_length: int, vocab_size: int) -> List[TokenBatch]:
    """This data-parallel rank's micro-batches of step `step` over random tokens.

    Sample `i` of the run is a pure function of (seed, i), and rank r takes samples the way
    Megatron's pretraining sampler deals them: micro-batch m of rank r holds global samples
    step*G + m*b*d + r*b ... + b - 1 (G global batch, b micro-batch size, d DP size). Any DP
    layout therefore trains on the same global batch.
    """
    per_rank = global_batch_size // dp_size
    if global_batch_size % (micro_batch_size * dp_size):
        raise ValueError(f"train.global_batch_size={global_batch_size} is not a multiple of "
                         f"train.micro_batch_size x data-parallel size = {micro_batch_size * dp_size}")
    batches = []
    for micro in range(per_rank // micro_batch_size):
        first = step * global_batch_size + micro * micro_batch_size * dp_size + dp_rank * micro_batch_size
        rows = [_synthetic_sample(seed, first + j, seq_length + 1, vocab_size) for j in range(micro_batch_size)]
        tokens = torch.stack(rows)
        batches.append(TokenBatch(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(),
                                  torch.ones(micro_batch_size, seq_length)))
    return batches


_SYNTHETIC_VOCAB = 512  # a small active vocabulary, so the baseline visibly learns its unigram


def _synthetic_sample(seed: int, index: int, length: int, vocab_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 7_919 + index)
    return torch.randint(0, min(vocab_size, _SYNTHETIC_VOCAB), (length,), generator=generator)
