"""Which SIP samples this data-parallel rank trains on at a step (Megatron's pretraining-sampler
dealing, from `consumed_samples`, so a resumed run reads exactly what an uninterrupted one does)."""

from __future__ import annotations

from typing import List, Tuple

from megatron_sip.data.batching import micro_batch_indices
from megatron_sip.data.build import SIPSampleSource
from megatron_sip.data.dataset import SIPSample


class StepSampler:
    def __init__(self, source: SIPSampleSource, *, global_batch_size: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int) -> None:
        """source: the run's sample order (`build_sip_dataset`); the batch sizes are the `train`
        section's, in sequences over all DP ranks (global) and per rank (micro)."""
        self.source = source
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.micro_batches_per_step = global_batch_size // (micro_batch_size * dp_size)

    def indices(self, consumed_samples: int) -> List[int]:
        """Global sample indices of this rank's prefixes for the step starting at `consumed_samples`."""
        batches = micro_batch_indices(
            total_samples=consumed_samples + self.global_batch_size, consumed_samples=consumed_samples,
            micro_batch_size=self.micro_batch_size, dp_rank=self.dp_rank, dp_size=self.dp_size)
        flat = [i for batch in batches for i in batch]
        assert len(flat) == self.micro_batches_per_step * self.micro_batch_size
        return flat

    def samples(self, consumed_samples: int) -> Tuple[List[int], List[SIPSample]]:
        indices = self.indices(consumed_samples)
        return indices, [self.source[i] for i in indices]
