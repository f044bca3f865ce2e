"""Which SIP samples this data-parallel rank trains on at a step (Megatron's pretraining-sampler
dealing, from `consumed_samples`, so a resumed run reads exactly what an uninterrupted one does)."""

from __future__ import annotations

from typing import List, Tuple

from megatron_sip.config import Config
from megatron_sip.data.batching import micro_batch_indices
from megatron_sip.data.build import build_sip_dataset
from megatron_sip.data.dataset import SIPSample
from megatron_sip.parallel import ParallelContext


class StepSampler:
    def __init__(self, cfg: Config, ctx: ParallelContext, *, eod_id: int) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.source = build_sip_dataset(cfg, eod_id=eod_id)
        self.micro_batches_per_step = cfg.train.global_batch_size // (cfg.train.micro_batch_size * ctx.dp_size)

    def indices(self, consumed_samples: int) -> List[int]:
        """Global sample indices of this rank's prefixes for the step starting at `consumed_samples`."""
        train = self.cfg.train
        batches = micro_batch_indices(
            total_samples=consumed_samples + train.global_batch_size, consumed_samples=consumed_samples,
            micro_batch_size=train.micro_batch_size, dp_rank=self.ctx.dp_rank, dp_size=self.ctx.dp_size)
        flat = [i for batch in batches for i in batch]
        assert len(flat) == self.micro_batches_per_step * train.micro_batch_size
        return flat

    def samples(self, consumed_samples: int) -> Tuple[List[int], List[SIPSample]]:
        indices = self.indices(consumed_samples)
        return indices, [self.source[i] for i in indices]
