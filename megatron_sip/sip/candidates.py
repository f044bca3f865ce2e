"""The candidate set of each prefix: the original suffix, the stored rewrite, K rollouts.

Candidates are token arrays of at most N tokens (the policy's tokenizer); the judge sees their
decoded text. Order is fixed (suffix, rewrite, rollouts) because tie-breaking in selection
relies on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from megatron_sip.data.dataset import SIPSample
from megatron_sip.sip.selection import FALLBACK_SUFFIX, REWRITE, ROLLOUT, SUFFIX


@dataclass(frozen=True)
class CandidateSet:
    """One prefix and its candidates."""

    sample: SIPSample
    kinds: Tuple[str, ...]
    tokens: Tuple[np.ndarray, ...]
    """int64 [<= N] per candidate, without padding."""

    @property
    def prefix(self) -> np.ndarray:
        return self.sample.prefix

    def index_of(self, kind: str) -> Optional[int]:
        return self.kinds.index(kind) if kind in self.kinds else None


def build_candidate_sets(samples: Sequence[SIPSample], rollouts: Optional[Sequence[Sequence[np.ndarray]]],
                         *, use_suffix: bool, use_rewrite: bool) -> List[CandidateSet]:
    """Candidate sets for `samples`; `rollouts[p]` holds prefix p's rollouts (EOD and padding
    already removed) or is None when rollouts are off. The suffix is always kept as the NLL
    fallback target, but is a *candidate* only when `use_suffix`."""
    sets = []
    for p, sample in enumerate(samples):
        kinds: List[str] = []
        tokens: List[np.ndarray] = []
        if use_suffix:
            kinds.append(SUFFIX)
            tokens.append(np.asarray(sample.suffix, dtype=np.int64))
        if use_rewrite and sample.rewrite is not None:
            kinds.append(REWRITE)
            tokens.append(np.asarray(sample.rewrite, dtype=np.int64))
        for rollout in (rollouts[p] if rollouts is not None else ()):
            kinds.append(ROLLOUT)
            tokens.append(np.asarray(rollout, dtype=np.int64))
        sets.append(CandidateSet(sample, tuple(kinds), tuple(tokens)))
    return sets


def continuation_for(candidates: CandidateSet, index: Optional[int]) -> np.ndarray:
    """Tokens of candidate `index`; the original suffix when `index` names the fallback target
    outside the candidate list (suffix not a candidate)."""
    if index is None:
        return np.zeros(0, dtype=np.int64)
    if index == FALLBACK_SUFFIX:
        return np.asarray(candidates.sample.suffix, dtype=np.int64)
    return candidates.tokens[index]


def candidate_sets_to_state(sets: Sequence[CandidateSet]) -> List[Dict[str, Any]]:
    """Candidate sets as tensors and plain containers (what a checkpoint may hold)."""
    return [{"dataset_id": c.sample.dataset_id, "doc_id": c.sample.doc_id, "split": c.sample.split,
             "prefix": torch.from_numpy(np.asarray(c.sample.prefix, dtype=np.int64)),
             "suffix": torch.from_numpy(np.asarray(c.sample.suffix, dtype=np.int64)),
             "rewrite": None if c.sample.rewrite is None else torch.from_numpy(np.asarray(c.sample.rewrite, dtype=np.int64)),
             "judgments": dict(c.sample.judgments), "kinds": list(c.kinds),
             "tokens": [torch.from_numpy(np.asarray(t, dtype=np.int64)) for t in c.tokens]} for c in sets]


def candidate_sets_from_state(state: Sequence[Dict[str, Any]]) -> List[CandidateSet]:
    """The inverse of `candidate_sets_to_state`."""
    sets = []
    for entry in state:
        rewrite = None if entry["rewrite"] is None else entry["rewrite"].numpy()
        sample = SIPSample(dataset_id=int(entry["dataset_id"]), doc_id=int(entry["doc_id"]), split=int(entry["split"]),
                           prefix=entry["prefix"].numpy(), suffix=entry["suffix"].numpy(), rewrite=rewrite,
                           judgments=dict(entry["judgments"]))
        sets.append(CandidateSet(sample, tuple(entry["kinds"]), tuple(t.numpy() for t in entry["tokens"])))
    return sets
