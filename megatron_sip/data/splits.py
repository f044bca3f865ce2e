"""Which (document, split position) the i-th sample of a dataset is: a pure function of
(seed, epoch, i), computed on demand in O(1) memory.

An epoch holds `samples_per_doc` slots per eligible document (text length >= min_prefix_len + N).
Sample i is in epoch e = i // slots_per_epoch; a keyed pseudo-random permutation (a Feistel
network with cycle walking, keyed by (seed, e)) maps its position in the epoch to a slot, so every
slot is used exactly once per epoch and the order differs between epochs. The k slots of a
document cut the range of legal split positions [min_prefix_len, length - N] into k strata and
draw one position uniformly in each: splits of one document differ whenever the range allows.

Unlike Megatron's GPTDataset nothing is materialised (no shuffle-index files to cache and share):
resuming at any `consumed_samples` costs nothing, and the rewrite job recomputes the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1
_FEISTEL_ROUNDS = 4
_SPLIT_STREAM = 0x5EED  # separates the split-position hash from the permutation's round keys


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective, well-mixing map of uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MUL1
        z = (z ^ (z >> np.uint64(27))) * _MUL2
    return z ^ (z >> np.uint64(31))


def _mix_int(x: int) -> int:
    """`_mix` on one Python int: the same bits, without numpy's per-call overhead."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def hash_uint64(*keys) -> np.ndarray:
    """A uint64 hash of the (broadcast) keys, as an array."""
    if all(np.size(key) == 1 for key in keys):  # one sample (the __getitem__ path): pure Python
        h = 0
        for key in keys:
            h = _mix_int(h ^ (int(np.asarray(key).reshape(-1)[0]) & _MASK64))
        return np.array([h], dtype=np.uint64)
    h = np.zeros(1, dtype=np.uint64)
    for key in keys:
        if isinstance(key, int):
            key = key & _MASK64  # negative seeds wrap like C's uint64_t
        h = _mix(h ^ np.asarray(key, dtype=np.uint64))
    return np.atleast_1d(h)


def permute(positions: np.ndarray, size: int, key: int) -> np.ndarray:
    """A bijection of [0, size) chosen by `key`, applied to `positions` (vectorised)."""
    positions = np.atleast_1d(np.asarray(positions, dtype=np.uint64))
    if size <= 1:
        return np.zeros_like(positions)
    bits = max(2, int(size - 1).bit_length())
    half = np.uint64((bits + 1) // 2)
    out = _feistel(positions, half, key)
    # Cycle walking: the network permutes [0, 4**half) >= size; walk out-of-range values on
    # until they land in range, which keeps the map a bijection of [0, size).
    outside = out >= np.uint64(size)
    while outside.any():
        out[outside] = _feistel(out[outside], half, key)
        outside = out >= np.uint64(size)
    return out


def _feistel(x: np.ndarray, half: np.uint64, key: int) -> np.ndarray:
    mask = (np.uint64(1) << half) - np.uint64(1)
    left, right = x >> half, x & mask
    for round_index in range(_FEISTEL_ROUNDS):
        round_bits = hash_uint64(key, round_index, right) & mask
        left, right = right, left ^ round_bits
    return (left << half) | right


@dataclass(frozen=True)
class SplitRule:
    """How documents are cut: the sampler's part of the data and sip config sections."""

    suffix_len: int
    """N: suffix tokens."""
    min_prefix_len: int
    """Shortest prefix in tokens."""
    max_prefix_len: int
    """Longest prefix in tokens (longer prefixes are left-truncated)."""
    samples_per_doc: int
    """Splits per eligible document per epoch."""
    seed: int
    """Seed of sample order and split positions."""

    @property
    def min_doc_len(self) -> int:
        return self.min_prefix_len + self.suffix_len


class SplitSchedule:
    """Sample index -> (document id, split position) for one dataset."""

    def __init__(self, text_lengths: np.ndarray, rule: SplitRule,
                 doc_ids: Optional[np.ndarray] = None) -> None:
        """`doc_ids`: the documents to sample from (Megatron's split of the dataset); None = all."""
        self.rule = rule
        self._lengths = np.asarray(text_lengths)  # kept as given (int32 for indexed datasets)
        if doc_ids is None:
            doc_ids = np.arange(self._lengths.shape[0], dtype=np.int64)
        doc_ids = np.asarray(doc_ids)
        eligible = doc_ids[self._lengths[doc_ids] >= rule.min_doc_len]
        # int32 ids where they fit: one array entry per document of the corpus, per rank.
        self.eligible_docs = eligible.astype(np.int32 if len(self._lengths) < 2**31 else np.int64)
        self.num_skipped_docs = int(doc_ids.shape[0] - self.eligible_docs.shape[0])
        self.samples_per_epoch = int(self.eligible_docs.shape[0]) * rule.samples_per_doc

    def locate(self, indices: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """int64 document ids and split positions (first suffix token) of sample `indices`."""
        indices = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if self.samples_per_epoch == 0:
            raise IndexError("no document is long enough for a sample")
        epochs, positions = np.divmod(indices, self.samples_per_epoch)
        docs = np.empty_like(indices)
        splits = np.empty_like(indices)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            docs[here], splits[here] = self._locate_in_epoch(int(epoch), positions[here])
        return docs, splits

    def _locate_in_epoch(self, epoch: int, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        rule, k = self.rule, self.rule.samples_per_doc
        epoch_key = int(hash_uint64(rule.seed, epoch)[0])
        slots = permute(positions, self.samples_per_epoch, epoch_key).astype(np.int64)
        docs = self.eligible_docs[slots // k].astype(np.int64)
        strata = slots % k
        # Legal split positions: [min_prefix_len, length - N], `num_positions` of them.
        num_positions = self._lengths[docs].astype(np.int64) - rule.min_doc_len + 1
        start = (num_positions * strata) // k
        width = np.maximum(1, (num_positions * (strata + 1)) // k - start)
        draw = hash_uint64(rule.seed, epoch, slots, _SPLIT_STREAM) % width.astype(np.uint64)
        return docs, rule.min_prefix_len + start + draw.astype(np.int64)
