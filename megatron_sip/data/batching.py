"""Which samples each data-parallel rank reads, from `consumed_samples` on.

The same contract as Megatron's `MegatronPretrainingSampler` (dataloader_type=single): samples are
taken in order from `consumed_samples`; each block of micro_batch_size * dp_size consecutive
samples is cut into dp_size contiguous micro-batches, rank r taking the r-th; an incomplete last
block is dropped. Ranks therefore see disjoint samples, together all of them, and a run resumed at
`consumed_samples = M` reads exactly what an uninterrupted run reads after its first M samples.
"""

from __future__ import annotations

import functools
from typing import Iterator, List, Optional

import torch

from megatron_sip.data.build import SIPSampleSource
from megatron_sip.data.collate import SIPBatch, collate_sip


def micro_batch_indices(*, total_samples: int, consumed_samples: int, micro_batch_size: int,
                        dp_rank: int, dp_size: int) -> Iterator[List[int]]:
    """Sample indices of each micro-batch of rank `dp_rank` (a pure function of its arguments)."""
    if micro_batch_size <= 0 or dp_size <= 0 or not 0 <= dp_rank < dp_size:
        raise ValueError(f"bad data-parallel layout: micro_batch_size={micro_batch_size}, "
                         f"dp_rank={dp_rank}, dp_size={dp_size}")
    if consumed_samples < 0:
        raise ValueError(f"consumed_samples must be >= 0, got {consumed_samples}")
    block = micro_batch_size * dp_size
    start = dp_rank * micro_batch_size
    for first in range(consumed_samples, total_samples - block + 1, block):
        yield list(range(first + start, first + start + micro_batch_size))


class SIPBatchSampler:
    """`micro_batch_indices` as a torch DataLoader `batch_sampler`."""

    def __init__(self, *, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int) -> None:
        self._kwargs = dict(total_samples=total_samples, consumed_samples=consumed_samples,
                            micro_batch_size=micro_batch_size, dp_rank=dp_rank, dp_size=dp_size)
        block = micro_batch_size * dp_size
        self._len = max(0, (total_samples - consumed_samples) // block)

    def __iter__(self) -> Iterator[List[int]]:
        return micro_batch_indices(**self._kwargs)

    def __len__(self) -> int:
        return self._len


def sip_data_loader(source: SIPSampleSource, *, consumed_samples: int, micro_batch_size: int,
                    dp_rank: int, dp_size: int, pad_id: int, num_workers: int = 0,
                    seq_length: Optional[int] = None) -> torch.utils.data.DataLoader:
    """A DataLoader of this rank's `SIPBatch`es from `consumed_samples` on (one pass)."""
    sampler = SIPBatchSampler(total_samples=len(source), consumed_samples=consumed_samples,
                              micro_batch_size=micro_batch_size, dp_rank=dp_rank, dp_size=dp_size)
    collate = functools.partial(collate_sip, pad_id=pad_id, seq_length=seq_length)
    return torch.utils.data.DataLoader(source, batch_sampler=sampler, collate_fn=collate,
                                       num_workers=num_workers,
                                       persistent_workers=num_workers > 0)


def iterate_micro_batches(source: SIPSampleSource, *, consumed_samples: int,
                          micro_batch_size: int, dp_rank: int, dp_size: int, pad_id: int,
                          seq_length: Optional[int] = None) -> Iterator[SIPBatch]:
    """This rank's `SIPBatch`es from `consumed_samples` on, read in this process."""
    for indices in micro_batch_indices(total_samples=len(source), consumed_samples=consumed_samples,
                                       micro_batch_size=micro_batch_size, dp_rank=dp_rank,
                                       dp_size=dp_size):
        yield collate_sip([source[i] for i in indices], pad_id=pad_id, seq_length=seq_length)


def global_batch_micro_batches(source: SIPSampleSource, *, consumed_samples: int,
                               global_batch_size: int, micro_batch_size: int, dp_rank: int,
                               dp_size: int, pad_id: int,
                               seq_length: Optional[int] = None) -> List[SIPBatch]:
    """This rank's micro-batches of the one global batch that starts at `consumed_samples`
    (what one optimizer step reads; a step-at-a-time view of `iterate_micro_batches`)."""
    if global_batch_size % (micro_batch_size * dp_size):
        raise ValueError(f"global batch {global_batch_size} is not a multiple of micro_batch_size "
                         f"x dp_size = {micro_batch_size * dp_size}")
    batches = micro_batch_indices(total_samples=consumed_samples + global_batch_size,
                                  consumed_samples=consumed_samples,
                                  micro_batch_size=micro_batch_size, dp_rank=dp_rank,
                                  dp_size=dp_size)
    return [collate_sip([source[i] for i in indices], pad_id=pad_id, seq_length=seq_length)
            for indices in batches]
