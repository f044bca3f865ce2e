"""Greedy N-token continuations of the held-out prefixes from one policy (the paper's evaluation
decoding), on Megatron-Core through the rollout generator.

Prefixes are sorted by length before they are cut into batches: the generator runs one pass per
prefix length, so neighbours in length share passes. Greedy decoding makes the result
independent of the batching and of the seed.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from megatron_sip.evaluate.progress import ProgressFactory, no_progress
from megatron_sip.parallel import ParallelContext


def greedy_continuations(model: Any, ctx: ParallelContext, prefixes: Sequence[np.ndarray], *, eod_id: int,
                         vocab_size: int, max_new_tokens: int, batch_size: int,
                         progress: ProgressFactory = no_progress, desc: str = "generate") -> List[np.ndarray]:
    """Per prefix, its greedy continuation of at most `max_new_tokens` tokens, EOD removed."""
    from megatron_sip.rollout import RolloutGenerator

    generator = RolloutGenerator([model], ctx, eod_id=eod_id, vocab_size=vocab_size)
    order = sorted(range(len(prefixes)), key=lambda p: len(prefixes[p]))
    continuations: List[Optional[np.ndarray]] = [None] * len(prefixes)
    with progress(desc=desc, total=len(prefixes)) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = generator.generate([prefixes[p] for p in chunk], num_samples=1, max_new_tokens=max_new_tokens,
                                       temperature=0.0, prefix_ids=chunk)
            for p, samples in zip(chunk, batch.continuations(eod_id=eod_id)):
                continuations[p] = samples[0]
            bar.update(len(chunk))
    return continuations
