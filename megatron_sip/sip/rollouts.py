"""K policy rollouts per prefix for the candidate sets (megatron_sip.rollout does the decoding)."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

from megatron_sip.config import Config
from megatron_sip.data.dataset import SIPSample
from megatron_sip.parallel import ParallelContext
from megatron_sip.train.setup import TrainState


class PolicyRollouts:
    def __init__(self, cfg: Config, ctx: ParallelContext, state: TrainState, *, eod_id: int) -> None:
        from megatron_sip.rollout import RolloutGenerator

        self.cfg, self.eod_id = cfg, eod_id
        self.generator = RolloutGenerator(state.model, ctx, eod_id=eod_id, vocab_size=cfg.model.vocab_size)

    def __call__(self, samples: Sequence[SIPSample], *, sample_indices: Sequence[int]) -> List[List[np.ndarray]]:
        """[prefix][k] rollout tokens, without padding or the final EOD.

        Randomness is keyed by the global sample index, which is unique over the run, so a
        prefix's rollouts do not depend on the parallel layout or on which step draws them.
        """
        sip = self.cfg.sip
        batch = self.generator.generate([s.prefix for s in samples], num_samples=sip.num_rollouts,
                                        max_new_tokens=sip.suffix_len, temperature=sip.temperature,
                                        top_p=sip.top_p, top_k=sip.top_k, seed=self.cfg.train.seed,
                                        prefix_ids=sample_indices)
        return batch.continuations(eod_id=self.eod_id)
