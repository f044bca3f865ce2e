"""The offline rewrite job: rewrite the suffix of every sample a run will train on, ahead of time.

The job walks samples 0..num_samples-1 of the run's blend (the trainer's order over all DP
ranks), skips those already in their dataset's store, asks a rewriter for the rest in batches,
optionally judges suffix and rewrite (judgments that involve no rollout), and appends the results
to the store in shards. Killed and restarted, it continues where the last committed shard ended
(see `rewrite_writer.py`). The rewriter and the judge are injected (`RewriteFn`, `StaticJudge`):
`megatron_sip.judges` supplies the real clients.

A rewrite is tokenized and cut to N tokens (the rewriter is asked for N tokens but counts its own
way); an empty answer or None counts as a failure and is retried by the next run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Set, Tuple

import numpy as np

from megatron_sip.data.build import build_sip_dataset
from megatron_sip.data.codec import TextCodec
from megatron_sip.data.config import DataConfig
from megatron_sip.data.dataset import SIPSample
from megatron_sip.data.rewrite_store import StoreMeta, index_digest, store_dir_for
from megatron_sip.data.rewrite_writer import RewriteStoreWriter
from megatron_sip.errors import ConfigError


@dataclass(frozen=True)
class RewriteRequest:
    """One suffix to rewrite, with its context."""

    dataset: str
    """Dataset path prefix."""
    doc_id: int
    split: int
    prefix_text: str
    """The prefix (up to data.max_prefix_len tokens) as text."""
    suffix_text: str
    """The original N-token suffix as text."""
    suffix_len: int
    """N: the length, in tokens, the rewrite should have."""


RewriteFn = Callable[[Sequence[RewriteRequest]], Sequence[Optional[str]]]
"""Rewrites of a batch of requests, in order; None where the rewriter failed."""


@dataclass(frozen=True)
class StaticJudgeRequest:
    """A suffix and its rewrite, for the judgments that involve no rollout."""

    request: RewriteRequest
    rewrite_text: str


class StaticJudge(Protocol):
    """Judges (suffix, rewrite) pairs; returns name -> score for the judgments it made."""

    names: Sequence[str]
    """The judgment names it may return (the store's columns)."""

    def __call__(self, requests: Sequence[StaticJudgeRequest]) -> Sequence[Mapping[str, float]]: ...


@dataclass
class RewriteJobStats:
    num_samples: int = 0
    """Samples walked."""
    num_already_stored: int = 0
    """Samples whose (doc, split) was stored, or seen earlier in this run."""
    num_written: int = 0
    """Rewrites committed by this run."""
    num_failed: int = 0
    """(doc, split) keys the rewriter returned nothing usable for (retried by the next run)."""


def run_rewrite_job(data: DataConfig, *, suffix_len: int, vocab_size: int, num_samples: int,
                    codec: TextCodec, rewrite_fn: RewriteFn, judge: Optional[StaticJudge] = None,
                    batch_size: int = 16, shard_size: int = 512,
                    on_progress: Optional[Callable[[int], None]] = None) -> RewriteJobStats:
    """Fill the rewrite stores of `data.paths` for the first `num_samples` samples (a run trains on
    `TrainConfig.num_samples`). Committed shards survive any interruption."""
    if not data.paths:
        raise ConfigError("data.paths", "is empty: the rewrite job needs datasets")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    source = build_sip_dataset(data, suffix_len=suffix_len, vocab_size=vocab_size, eod_id=codec.eod_id,
                               num_samples=num_samples, use_rewrites=False)
    names = list(judge.names) if judge is not None else []
    writers = [_open_writer(data, prefix, dataset.documents.num_docs, names, codec, suffix_len=suffix_len)
               for prefix, dataset in zip(source.prefixes, source.datasets)]
    job = _Job(source.prefixes, writers, codec, rewrite_fn, judge, shard_size)
    try:
        batch: List[SIPSample] = []
        for index in range(num_samples):
            sample = source[index]
            job.stats.num_samples += 1
            if job.is_covered(sample, batch):
                job.stats.num_already_stored += 1
            else:
                batch.append(sample)
            if len(batch) == batch_size:
                job.process(batch)
                batch = []
            if on_progress is not None:
                on_progress(1)
        job.process(batch)
    finally:
        job.commit_and_close()  # what came back before an error is valid: keep it
    return job.stats


def _open_writer(data: DataConfig, prefix: str, num_docs: int, names: List[str], codec: TextCodec, *,
                 suffix_len: int) -> RewriteStoreWriter:
    meta = StoreMeta(dataset=Path(prefix).name, num_docs=num_docs, suffix_len=suffix_len,
                     tokenizer=data.tokenizer, judgments=names, index_digest=index_digest(prefix))
    return RewriteStoreWriter(store_dir_for(prefix, data.rewrite_store), meta,
                              vocab_size=codec.vocab_size)


class _Job:
    """The per-run state of `run_rewrite_job`: writers, counters, and one batch step."""

    def __init__(self, prefixes: List[str], writers: List[RewriteStoreWriter], codec: TextCodec,
                 rewrite_fn: RewriteFn, judge: Optional[StaticJudge], shard_size: int) -> None:
        self.prefixes, self.writers, self.codec = prefixes, writers, codec
        self.rewrite_fn, self.judge, self.shard_size = rewrite_fn, judge, shard_size
        self.stats = RewriteJobStats()
        self._failed: Set[Tuple[int, int, int]] = set()  # not retried within one run

    def is_covered(self, sample: SIPSample, batch: Sequence[SIPSample]) -> bool:
        """Whether this run has nothing to do for the sample's (doc, split)."""
        if self.writers[sample.dataset_id].contains(sample.doc_id, sample.split):
            return True
        key = _key(sample)
        return key in self._failed or any(_key(s) == key for s in batch)

    def process(self, batch: Sequence[SIPSample]) -> None:
        if not batch:
            return
        requests = [self._request(sample) for sample in batch]
        texts = list(self.rewrite_fn(requests))
        if len(texts) != len(requests):
            raise RuntimeError(f"the rewriter answered {len(texts)} of {len(requests)} requests")
        done = []
        for sample, request, text in zip(batch, requests, texts):
            tokens = self.codec.encode(text)[: request.suffix_len] if text else []
            if not tokens:
                self.stats.num_failed += 1
                self._failed.add(_key(sample))
                continue
            done.append((sample, request, text, tokens))
        judgments = self._judge(done)
        for (sample, _, _, tokens), scores in zip(done, judgments):
            writer = self.writers[sample.dataset_id]
            writer.add(sample.doc_id, sample.split, np.asarray(tokens, dtype=np.int64), scores)
            if writer.num_pending >= self.shard_size:
                self.stats.num_written += writer.commit()

    def _request(self, sample: SIPSample) -> RewriteRequest:
        return RewriteRequest(dataset=self.prefixes[sample.dataset_id], doc_id=sample.doc_id,
                              split=sample.split, prefix_text=self.codec.decode(sample.prefix),
                              suffix_text=self.codec.decode(sample.suffix),
                              suffix_len=int(len(sample.suffix)))

    def _judge(self, done: Sequence[tuple]) -> List[Dict[str, float]]:
        if self.judge is None or not done:
            return [{} for _ in done]
        answers = list(self.judge([StaticJudgeRequest(request=request, rewrite_text=text)
                                   for _, request, text, _ in done]))
        if len(answers) != len(done):
            raise RuntimeError(f"the judge answered {len(answers)} of {len(done)} requests")
        return [dict(answer) for answer in answers]

    def commit_and_close(self) -> None:
        try:
            for writer in self.writers:
                self.stats.num_written += writer.commit()
        finally:
            for writer in self.writers:
                writer.close()


def _key(sample: SIPSample) -> Tuple[int, int, int]:
    return (sample.dataset_id, sample.doc_id, sample.split)
