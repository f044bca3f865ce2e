"""The samples a data-parallel rank would train on, as readable records (`megatron-sip sample`)."""

from __future__ import annotations

import itertools
import math
from typing import Any, Dict, Iterator, List

from megatron_sip.data.batching import micro_batch_indices
from megatron_sip.data.build import SIPSampleSource, build_sip_dataset
from megatron_sip.data.codec import TextCodec
from megatron_sip.data.config import DataConfig


def rank_sample_indices(*, count: int, start: int, micro_batch_size: int, dp_rank: int,
                        dp_size: int) -> List[int]:
    """Global indices of the first `count` samples rank `dp_rank` reads from consumed = `start`."""
    num_micro_batches = math.ceil(count / micro_batch_size)
    total = start + num_micro_batches * micro_batch_size * dp_size
    batches = micro_batch_indices(total_samples=total, consumed_samples=start,
                                  micro_batch_size=micro_batch_size, dp_rank=dp_rank,
                                  dp_size=dp_size)
    return list(itertools.islice(itertools.chain.from_iterable(batches), count))


def preview_records(data: DataConfig, *, suffix_len: int, vocab_size: int, micro_batch_size: int,
                    codec: TextCodec, count: int, start: int = 0, dp_rank: int = 0, dp_size: int = 1,
                    tail_tokens: int = 24) -> Iterator[Dict[str, Any]]:
    """One record per sample, in the order rank `dp_rank` of `dp_size` would read them
    (`suffix_len`, `vocab_size`: as for `build_sip_dataset`)."""
    indices = rank_sample_indices(count=count, start=start, micro_batch_size=micro_batch_size,
                                  dp_rank=dp_rank, dp_size=dp_size)
    if not indices:
        return
    source = build_sip_dataset(data, suffix_len=suffix_len, vocab_size=vocab_size, eod_id=codec.eod_id,
                               num_samples=max(indices) + 1)
    for index in indices:
        yield sample_record(source, index, codec=codec, tail_tokens=tail_tokens)


def sample_record(source: SIPSampleSource, index: int, *, codec: TextCodec,
                  tail_tokens: int) -> Dict[str, Any]:
    sample = source[index]
    tail = sample.prefix[-tail_tokens:] if tail_tokens > 0 else sample.prefix[:0]
    return {
        "index": index,
        "dataset": source.prefixes[sample.dataset_id],
        "doc_id": sample.doc_id,
        "split": sample.split,
        "prefix_len": int(len(sample.prefix)),
        "suffix_len": int(len(sample.suffix)),
        "prefix_tail_text": codec.decode(tail),
        "suffix_text": codec.decode(sample.suffix),
        "rewrite_text": None if sample.rewrite is None else codec.decode(sample.rewrite),
        "judgments": sample.judgments,
    }
