"""JSONL -> Megatron-Core indexed dataset: one document per line, EOD appended.

Lines are parsed and tokenized in chunks, by `num_workers` processes when more than one (each
loads the tokenizer once; `spawn`, not `fork`, because the parent's fast tokenizer owns a thread
pool that does not survive a fork). Chunks come back in input order, so document i is the i-th
good line whatever the number of workers. The files are written under temporary names and renamed
at the end (`AtomicIndexedWriter`).
"""

from __future__ import annotations

import collections
import functools
import multiprocessing
import time
from dataclasses import dataclass
from typing import Callable, Deque, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from megatron_sip.data.codec import TextCodec, load_codec
from megatron_sip.data.indexed import AtomicIndexedWriter, bin_path, idx_path, token_dtype
from megatron_sip.data.jsonl import DEFAULT_MAX_LINE_BYTES, BadLine, RawLine, check_inputs, iter_chunks, parse_line
from megatron_sip.errors import InputError

CHUNK_LINES = 256
"""Lines per unit of work: large enough to amortise inter-process transfer, small enough for a
smooth progress bar."""

_CHUNKS_IN_FLIGHT_PER_WORKER = 4

Encoded = Union[List[int], BadLine]


@dataclass(frozen=True)
class PreprocessStats:
    num_docs: int
    num_tokens: int
    """Tokens written, EODs included."""
    num_bad_lines: int
    """Lines skipped with --skip-bad-lines."""
    first_bad_line: Optional[str]
    """The first skipped line's error, for the summary."""
    seconds: float


def preprocess_jsonl(inputs: Sequence[str], output_prefix: str, *, codec: TextCodec,
                     json_key: str = "text", num_workers: int = 1, skip_bad_lines: bool = False,
                     tokenizer_spec: Optional[str] = None, overwrite: bool = False,
                     max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                     on_progress: Optional[Callable[[int], None]] = None) -> PreprocessStats:
    """Write `output_prefix`.bin/.idx from the JSONL `inputs` (in order).

    tokenizer_spec: what workers load when num_workers > 1 (they cannot share `codec`).
    overwrite: replace an existing dataset at `output_prefix` (else InputError).
    max_line_bytes: longer lines are bad lines (never read whole).
    on_progress: called with the number of documents added since the last call.
    """
    check_inputs(inputs)
    if not overwrite:
        check_output_free(output_prefix)
    if num_workers > 1 and tokenizer_spec is None:
        raise ValueError("num_workers > 1 needs tokenizer_spec for the worker processes")
    started = time.monotonic()
    num_bad, first_bad = 0, None
    with AtomicIndexedWriter(output_prefix, dtype=token_dtype(codec.vocab_size)) as writer:
        for results in _encoded_chunks(inputs, codec, json_key, num_workers, tokenizer_spec, max_line_bytes):
            for result in results:
                if isinstance(result, BadLine):
                    if not skip_bad_lines:
                        raise InputError(f"{result} (--skip-bad-lines skips such lines)")
                    num_bad += 1
                    first_bad = first_bad or str(result)
                    continue
                writer.add_document(np.asarray(result + [codec.eod_id], dtype=np.int64))
            if on_progress is not None:
                on_progress(sum(1 for r in results if not isinstance(r, BadLine)))
        if writer.num_documents == 0:
            raise InputError(f"{', '.join(inputs)}: no document (all {num_bad} lines were bad)")
        writer.commit()
    return PreprocessStats(num_docs=writer.num_documents, num_tokens=writer.num_tokens,
                           num_bad_lines=num_bad, first_bad_line=first_bad,
                           seconds=time.monotonic() - started)


def check_output_free(output_prefix: str) -> None:
    """InputError when a dataset (either file) already exists at `output_prefix`."""
    existing = [str(path) for path in (bin_path(output_prefix), idx_path(output_prefix)) if path.exists()]
    if existing:
        raise InputError(f"{' and '.join(existing)}: a dataset exists there; pass --force to overwrite it "
                         "(its rewrite store would then be refused as stale)")


def _encoded_chunks(inputs: Sequence[str], codec: TextCodec, json_key: str, num_workers: int,
                    tokenizer_spec: Optional[str], max_line_bytes: int) -> Iterator[List[Encoded]]:
    chunks = iter_chunks(inputs, CHUNK_LINES, max_line_bytes=max_line_bytes)
    if num_workers <= 1:
        for chunk in chunks:
            yield encode_chunk(chunk, json_key=json_key, codec=codec)
        return
    context = multiprocessing.get_context("spawn")
    initargs = (tokenizer_spec, codec.eod_token)
    encode = functools.partial(_encode_in_worker, json_key=json_key)
    with context.Pool(num_workers, initializer=_init_worker, initargs=initargs) as pool:
        # A bounded window of chunks in flight, collected in submission order: Pool.imap would
        # read the whole corpus into its task queue ahead of the workers.
        in_flight: Deque = collections.deque()
        for chunk in chunks:
            in_flight.append(pool.apply_async(encode, (chunk,)))
            if len(in_flight) >= _CHUNKS_IN_FLIGHT_PER_WORKER * num_workers:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


def encode_chunk(chunk: Sequence[RawLine], *, json_key: str, codec: TextCodec) -> List[Encoded]:
    """Token ids (without EOD) of each line's text, or the line's error."""
    parsed = [parse_line(line, json_key) for line in chunk]
    texts = [p for p in parsed if isinstance(p, str)]
    encoded = iter(codec.encode_batch(texts))
    return [p if isinstance(p, BadLine) else next(encoded) for p in parsed]


_worker_codec: Optional[TextCodec] = None  # one per worker process, set by the pool initializer


def _init_worker(tokenizer_spec: str, eod_token: str) -> None:
    global _worker_codec
    _worker_codec = load_codec(tokenizer_spec, eod_token)


def _encode_in_worker(chunk: Sequence[RawLine], *, json_key: str) -> List[Encoded]:
    assert _worker_codec is not None, "worker used before its initializer ran"
    return encode_chunk(chunk, json_key=json_key, codec=_worker_codec)


def split_inputs(spec: str) -> Tuple[str, ...]:
    """`--input F.jsonl,G.jsonl` -> its files, in order."""
    return tuple(part.strip() for part in spec.split(",") if part.strip())
