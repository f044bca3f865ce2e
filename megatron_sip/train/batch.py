"""Micro-batches of next-token training, as the `nll` loss sees them.

Legend: B micro-batch size, S sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

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
