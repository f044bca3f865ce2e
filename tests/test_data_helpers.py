"""Shared helpers of the data tests (no tests here): a once-per-process tokenizer, token corpora
written straight to indexed datasets, and small run configs."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np

from megatron_sip.config import Config, SIPConfig, TrainConfig
from megatron_sip.data.codec import TextCodec, load_codec
from megatron_sip.data.config import DataConfig
from megatron_sip.data.indexed import AtomicIndexedWriter
from megatron_sip.model.config import ModelConfig

EOD = 0
VOCAB = 1000


@functools.lru_cache(maxsize=None)
def embedded_codec() -> TextCodec:
    """The embedded SmolLM2 tokenizer (about 5 s to load), loaded once per test process."""
    return load_codec("embedded")


def random_docs(num_docs: int, *, min_len: int, max_len: int, seed: int = 0) -> List[np.ndarray]:
    """Documents of random tokens in [1, VOCAB) (0 is the EOD), lengths in [min_len, max_len]."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, size=int(rng.integers(min_len, max_len + 1)))
            for _ in range(num_docs)]


def write_docs(prefix: Path, docs: Sequence[np.ndarray], *, eod: Optional[int] = EOD) -> str:
    """An indexed dataset of `docs` (EOD appended unless None); its prefix as a string."""
    with AtomicIndexedWriter(str(prefix), dtype=np.uint16) as writer:
        for doc in docs:
            tokens = np.asarray(doc) if eod is None else np.append(doc, eod)
            writer.add_document(tokens)
        writer.commit()
    return str(prefix)


def run_config(paths: List, *, suffix_len: int = 16, min_prefix_len: int = 4,
               max_prefix_len: int = 64, samples_per_doc: int = 1, seed: int = 1234,
               rewrite_store: Optional[str] = None, micro_batch_size: int = 2,
               global_batch_size: int = 8, steps: int = 10) -> Config:
    """A small validated run config over `paths` (built directly: no override grammar)."""
    return Config(
        model=ModelConfig(vocab_size=VOCAB, seq_length=max_prefix_len + suffix_len),
        data=DataConfig(paths=list(paths), max_prefix_len=max_prefix_len,
                        min_prefix_len=min_prefix_len, samples_per_doc=samples_per_doc,
                        seed=seed, rewrite_store=rewrite_store),
        sip=SIPConfig(suffix_len=suffix_len),
        train=TrainConfig(steps=steps, micro_batch_size=micro_batch_size,
                          global_batch_size=global_batch_size),
    )


def run_samples(cfg: Config, *, eod_id: Optional[int], num_samples: Optional[int] = None, **kwargs):
    """`build_sip_dataset` over the sections of `cfg` (num_samples: None = the run's samples)."""
    from megatron_sip.data.build import build_sip_dataset

    return build_sip_dataset(cfg.data, suffix_len=cfg.sip.suffix_len, vocab_size=cfg.model.vocab_size,
                             num_samples=cfg.train.num_samples if num_samples is None else num_samples,
                             eod_id=eod_id, **kwargs)


def rewrite_job(cfg: Config, *, num_samples: int, **kwargs):
    """`run_rewrite_job` over the sections of `cfg`."""
    from megatron_sip.data.rewrite_job import run_rewrite_job

    return run_rewrite_job(cfg.data, suffix_len=cfg.sip.suffix_len, vocab_size=cfg.model.vocab_size,
                           num_samples=num_samples, **kwargs)


def write_jsonl(path: Path, records: Iterable) -> Path:
    """One JSON value per line (bytes lines are written as they are)."""
    with open(path, "wb") as stream:
        for record in records:
            line = record if isinstance(record, bytes) else json.dumps(record).encode()
            stream.write(line + b"\n")
    return path
