"""N-token continuations of the held-out prefixes from one policy, on Megatron-Core through the
rollout generator: greedy (the paper's evaluation decoding) or sampled.

Prefixes are sorted by length before they are cut into batches: the generator runs one pass per
prefix length, so neighbours in length share passes. The result does not depend on the batching:
greedy needs no randomness, and sampling draws its random numbers from (SAMPLING_SEED, prefix
index), the same for every model evaluated.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from megatron_sip.evaluate.progress import ProgressFactory, no_progress
from megatron_sip.parallel import ParallelContext


SAMPLING_SEED = 20260
"""Seed of sampled evaluation continuations (fixed: every model and run sees the same draws)."""


def continuations(model: Any, ctx: ParallelContext, prefixes: Sequence[np.ndarray], *, eod_id: int,
                  vocab_size: int, max_new_tokens: int, batch_size: int, temperature: float = 0.0,
                  progress: ProgressFactory = no_progress, desc: str = "generate") -> List[np.ndarray]:
    """Per prefix, its continuation of at most `max_new_tokens` tokens (EOD removed): greedy at
    temperature 0, else sampled."""
    return [samples[0] for samples in sampled_continuations(
        model, ctx, prefixes, eod_id=eod_id, vocab_size=vocab_size, max_new_tokens=max_new_tokens,
        batch_size=batch_size, temperature=temperature, progress=progress, desc=desc)]


def sampled_continuations(model: Any, ctx: ParallelContext, prefixes: Sequence[np.ndarray], *, eod_id: int,
                          vocab_size: int, max_new_tokens: int, batch_size: int, num_samples: int = 1,
                          temperature: float = 0.0, seed: int = SAMPLING_SEED, progress: ProgressFactory = no_progress,
                          desc: str = "generate") -> List[List[np.ndarray]]:
    """Per prefix, `num_samples` continuations; sample k of prefix p draws from (seed, p, k)
    whatever the batching."""
    from megatron_sip.rollout import RolloutGenerator

    generator = RolloutGenerator([model], ctx, eod_id=eod_id, vocab_size=vocab_size)
    order = sorted(range(len(prefixes)), key=lambda p: len(prefixes[p]))
    continuations: List[Optional[List[np.ndarray]]] = [None] * len(prefixes)
    with progress(desc=desc, total=len(prefixes)) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = generator.generate([prefixes[p] for p in chunk], num_samples=num_samples,
                                       max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                       prefix_ids=chunk)
            for p, samples in zip(chunk, batch.continuations(eod_id=eod_id)):
                continuations[p] = samples
            bar.update(len(chunk))
    return continuations
