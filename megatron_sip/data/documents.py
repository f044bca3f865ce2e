"""Documents as the sampler sees them: a count, text lengths, and token ranges.

A document of an indexed dataset is the concatenation of its sequences (Megatron's
`document_indices`; our preprocess writes one sequence per document, Megatron's own
`preprocess_data.py --split-sentences` writes several). Its *text length* leaves out the
end-of-document token: a suffix is text, and the rewriter never writes an EOD.

When an EOD id is given, every document is taken to end with it (our preprocess and Megatron's
`--append-eod` do) and its last token is never cut into a suffix. Checking each document's last
token instead would read one scattered token per document of the .bin at every start, which is
a full scan of a large corpus; for a document without an EOD the rule only forgoes its last split
position.
"""

from __future__ import annotations

from typing import Optional, Protocol

import numpy as np

from megatron_sip.data.indexed import open_indexed_dataset


class DocumentSource(Protocol):
    """What `SIPDataset` needs from a low-level dataset."""

    @property
    def num_docs(self) -> int: ...

    @property
    def text_lengths(self) -> np.ndarray:
        """int32 [num_docs]: tokens per document without its trailing EOD."""

    def tokens(self, doc_id: int, start: int, stop: int) -> np.ndarray:
        """int64 token ids [start, stop) of document `doc_id` (0 <= start <= stop <= length)."""


class IndexedDocuments:
    """The documents of a Megatron-Core indexed dataset (read through Megatron-Core's reader)."""

    def __init__(self, prefix: str, *, eod_id: Optional[int]) -> None:
        self.prefix = prefix
        self.dataset = open_indexed_dataset(prefix)
        bounds = self.dataset.document_indices  # a view of the .idx: no copy per document
        token_ends = np.concatenate([[0], np.cumsum(self.dataset.sequence_lengths, dtype=np.int64)])
        self._first_sequence = bounds[:-1]
        doc_lengths = token_ends[bounds[1:]] - token_ends[bounds[:-1]]
        if eod_id is not None:
            doc_lengths = np.maximum(doc_lengths - 1, 0)
        # int32: 4 bytes per document is what a corpus of 10^8 documents can afford per rank.
        self._text_lengths = doc_lengths.astype(np.int32)

    @property
    def num_docs(self) -> int:
        return int(self._text_lengths.shape[0])

    @property
    def text_lengths(self) -> np.ndarray:
        return self._text_lengths

    def tokens(self, doc_id: int, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.zeros(0, dtype=np.int64)
        # Sequences of a document are contiguous in the .bin (checked when opening), so one read
        # from the document's first sequence spans all of them.
        array = self.dataset.get(int(self._first_sequence[doc_id]), offset=start, length=stop - start)
        return np.array(array, dtype=np.int64)  # a copy: Megatron unmaps its buffer on __del__


class SyntheticDocuments:
    """Random documents for smoke tests without a corpus (`data.paths: []`).

    Lengths are uniform in [min_length, max_length]; token t of document d is a hash of
    (seed, d, t), so any range is computed on demand and nothing is stored.
    """

    def __init__(self, *, num_docs: int, min_length: int, max_length: int, vocab_size: int,
                 seed: int) -> None:
        rng = np.random.default_rng([seed, num_docs])
        self._text_lengths = rng.integers(min_length, max_length + 1, size=num_docs).astype(np.int32)
        self._vocab_size = vocab_size
        self._seed = seed

    @property
    def num_docs(self) -> int:
        return int(self._text_lengths.shape[0])

    @property
    def text_lengths(self) -> np.ndarray:
        return self._text_lengths

    def tokens(self, doc_id: int, start: int, stop: int) -> np.ndarray:
        from megatron_sip.data.splits import hash_uint64

        positions = np.arange(start, stop, dtype=np.uint64)
        hashed = hash_uint64(np.uint64(self._seed), np.uint64(doc_id), positions)
        # Token 0 is left out: it is the EOD/pad id of the embedded tokenizer.
        return (hashed % np.uint64(self._vocab_size - 1)).astype(np.int64) + 1
