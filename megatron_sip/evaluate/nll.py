"""Held-out NLL: teacher-forced forward passes over prefix + original suffix, scoring only the
suffix tokens (what the trainer's loss mask scores), through the run's own log-prob head
(`sip.logprobs_impl`)."""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy as np
import torch

from megatron_sip.data.collate import pack_sequences
from megatron_sip.evaluate.progress import ProgressFactory, no_progress
from megatron_sip.model.logprob_head import LogprobHead


def suffix_nll(model: Any, head: LogprobHead, prefixes: Sequence[np.ndarray], suffixes: Sequence[np.ndarray], *,
               pad_id: int, device: torch.device, batch_size: int, progress: ProgressFactory = no_progress,
               desc: str = "nll") -> Tuple[List[float], List[int]]:
    """Per sample: the summed -log p of its suffix tokens given the prefix, and their count."""
    sums: List[float] = []
    counts: List[int] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), progress(desc=desc, total=len(prefixes)) as bar:
            for start in range(0, len(prefixes), batch_size):
                batch = pack_sequences(prefixes[start:start + batch_size], suffixes[start:start + batch_size],
                                       pad_id=pad_id)
                mask_BS = batch.loss_mask_BS.to(device)
                nll_BS = head(model, batch.tokens_BS.to(device), batch.position_ids_BS.to(device),
                              batch.labels_BS.to(device), mask_BS)
                # The megatron head scores every position; only the suffix targets count.
                sums += (nll_BS.float() * mask_BS).sum(dim=1).tolist()
                counts += batch.loss_mask_BS.sum(dim=1).to(torch.int64).tolist()
                bar.update(len(batch.tokens_BS))
    finally:
        model.train(was_training)
    return sums, counts
