"""The rewrite store and the offline rewrite job: exactly-once shards across crashes, lookups the
sampler attaches, and the job's resume. The rewriter and judge here are deterministic doubles (the
fault injection); the store and the job are the real code under test."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import pytest

import megatron_sip.data.rewrite_writer as writer_module
from megatron_sip.data.collate import collate_sip
from megatron_sip.data.documents import IndexedDocuments
from megatron_sip.data.rewrite_job import RewriteRequest, StaticJudgeRequest
from megatron_sip.data.rewrite_store import RewriteStoreReader, StoreMeta, store_dir_for
from megatron_sip.data.rewrite_writer import RewriteStoreWriter
from megatron_sip.errors import ConfigError, InputError
from tests.test_data_helpers import embedded_codec, EOD, rewrite_job, run_config, run_samples, write_docs

META = StoreMeta(dataset="corpus", num_docs=10, suffix_len=4, tokenizer="embedded",
                 judgments=["suffix_safe", "rewrite_wins"])


def _writer(store: Path, meta: StoreMeta = META) -> RewriteStoreWriter:
    return RewriteStoreWriter(store, meta, vocab_size=1000)


def test_store_round_trip_with_judgments(tmp_path: Path) -> None:
    store = tmp_path / "corpus.rewrites"
    with _writer(store) as writer:
        writer.add(3, 17, np.array([5, 6, 7]), {"suffix_safe": 1.0})
        writer.add(3, 40, np.array([8]))
        assert writer.commit() == 2
        writer.add(9, 2, np.array([1, 2, 3, 4]), {"suffix_safe": 0.0, "rewrite_wins": 0.5})
        assert writer.commit() == 1 and writer.commit() == 0
    reader = RewriteStoreReader.open(store)
    assert reader.num_entries == 3
    first = reader.get(3, 17)
    assert first.tokens.tolist() == [5, 6, 7] and first.judgments == {"suffix_safe": 1.0}
    assert reader.get(3, 40).judgments == {}
    assert reader.get(9, 2).judgments == {"suffix_safe": 0.0, "rewrite_wins": 0.5}
    assert reader.get(3, 18) is None and reader.get(0, 17) is None
    assert RewriteStoreReader.open(tmp_path / "nothing.rewrites") is None


def test_writer_refuses_bad_entries_and_a_second_writer(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with _writer(store) as writer:
        writer.add(1, 1, np.array([1]))
        with pytest.raises(ValueError, match="already"):
            writer.add(1, 1, np.array([2]))
        with pytest.raises(ValueError, match="1..4 tokens"):
            writer.add(1, 2, np.array([1, 2, 3, 4, 5]))
        with pytest.raises(ValueError, match="not a column"):
            writer.add(1, 3, np.array([1]), {"quality": 1.0})
        with pytest.raises(InputError, match="another megatron-sip rewrite"):
            _writer(store)
    _writer(store).close()  # the lock is released on close


def test_crash_before_the_manifest_loses_only_that_shard(tmp_path: Path, monkeypatch) -> None:
    store = tmp_path / "s"
    with _writer(store) as writer:
        writer.add(1, 10, np.array([1, 2]))
        writer.commit()
        writer.add(2, 20, np.array([3]))

        def crash(*args, **kwargs):
            raise OSError("disk gone")

        monkeypatch.setattr(writer_module, "write_manifest", crash)
        with pytest.raises(OSError):
            writer.commit()
    monkeypatch.undo()
    # The shard's data files were written but never committed: readers do not see them.
    assert (store / "shard-00001.bin").exists()
    assert RewriteStoreReader.open(store).num_entries == 1
    with _writer(store) as writer:  # reopening removes the leftovers
        assert not (store / "shard-00001.bin").exists()
        assert writer.contains(1, 10) and not writer.contains(2, 20)
        writer.add(2, 20, np.array([3]))
        writer.commit()
    reader = RewriteStoreReader.open(store)
    assert sorted(map(tuple, reader.keys.tolist())) == [(1, 10), (2, 20)]


def test_store_must_match_dataset_and_suffix_len(tmp_path: Path) -> None:
    store = tmp_path / "s"
    _writer(store).close()
    with pytest.raises(ConfigError, match=r"^sip\.suffix_len"):
        _writer(store, StoreMeta(**{**META.__dict__, "suffix_len": 8}))
    with pytest.raises(InputError, match="written for a dataset of 10 documents"):
        _writer(store, StoreMeta(**{**META.__dict__, "num_docs": 11}))
    (store / "store.json").write_text("{not json")
    with pytest.raises(InputError, match="corrupt rewrite store manifest"):
        RewriteStoreReader.open(store)


@pytest.fixture(scope="module")
def codec():
    return embedded_codec()


class UppercaseRewriter:
    """A deterministic rewriter double: uppercases the suffix, fails on every 5th document, and
    can raise after a number of calls (a crash)."""

    def __init__(self, crash_after_calls: Optional[int] = None) -> None:
        self.requests: List[RewriteRequest] = []
        self.crash_after_calls = crash_after_calls
        self.calls = 0

    def __call__(self, requests: Sequence[RewriteRequest]) -> List[Optional[str]]:
        self.calls += 1
        if self.crash_after_calls is not None and self.calls > self.crash_after_calls:
            raise ConnectionError("rewriter went away")
        self.requests.extend(requests)
        return [None if r.doc_id % 5 == 0 else r.suffix_text.upper() for r in requests]


class SafetyJudge:
    names = ["suffix_safe"]

    def __call__(self, requests: Sequence[StaticJudgeRequest]) -> List[dict]:
        return [{"suffix_safe": float("X" not in r.request.suffix_text)} for r in requests]


def _text_config(paths, **kwargs):
    """run_config for a corpus of embedded-tokenizer ids: the model's vocabulary must cover them."""
    cfg = run_config(paths, **kwargs)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=embedded_codec().vocab_size))


@pytest.fixture
def text_corpus(tmp_path: Path, codec) -> str:
    words = "the river runs past old mills and quiet farms under grey hills".split()
    rng = np.random.default_rng(3)
    docs = [np.array(codec.encode(" ".join(rng.choice(words, size=int(rng.integers(20, 60))))))
            for _ in range(30)]
    return write_docs(tmp_path / "text", docs)


def test_job_writes_resumes_and_the_sampler_attaches(text_corpus: str, codec, tmp_path: Path) -> None:
    cfg = _text_config([text_corpus], suffix_len=8, max_prefix_len=32)
    rewriter = UppercaseRewriter(crash_after_calls=3)
    with pytest.raises(ConnectionError):
        rewrite_job(cfg, codec=codec, rewrite_fn=rewriter, judge=SafetyJudge(),
                        num_samples=60, batch_size=4, shard_size=5)
    reader = RewriteStoreReader.open(store_dir_for(text_corpus, None))
    assert reader.num_entries == sum(r.doc_id % 5 != 0 for r in rewriter.requests)  # all kept

    retry = UppercaseRewriter()
    stats = rewrite_job(cfg, codec=codec, rewrite_fn=retry, judge=SafetyJudge(),
                            num_samples=60, batch_size=4, shard_size=5)
    source = run_samples(cfg, eod_id=EOD, num_samples=60)
    keys = {(s.doc_id, s.split) for s in (source[i] for i in range(60))}
    failing = {k for k in keys if k[0] % 5 == 0}
    assert stats.num_samples == 60 and stats.num_failed == len(failing)
    assert {(r.doc_id, r.split) for r in retry.requests}.isdisjoint(
        {(r.doc_id, r.split) for r in rewriter.requests if r.doc_id % 5})  # nothing redone
    reader = RewriteStoreReader.open(store_dir_for(text_corpus, None))
    stored = [tuple(k) for k in reader.keys.tolist()]
    assert len(stored) == len(set(stored)) and set(stored) == keys - failing

    samples = [source[i] for i in range(60)]
    for s in samples:
        if s.doc_id % 5 == 0:
            assert s.rewrite is None
            continue
        expected = codec.encode(codec.decode(s.suffix).upper())[:8]
        assert s.rewrite.tolist() == expected
        assert s.judgments == {"suffix_safe": 1.0}
    batch = collate_sip(samples[:6], pad_id=EOD)
    assert batch.rewrite is not None
    assert batch.has_rewrite_B.tolist() == [s.rewrite is not None for s in samples[:6]]
    assert batch.rewrite.loss_mask_BS.sum(1).tolist() == [
        float(len(s.rewrite)) if s.rewrite is not None else 0.0 for s in samples[:6]]

    again = rewrite_job(cfg, codec=codec, rewrite_fn=UppercaseRewriter(), judge=SafetyJudge(),
                            num_samples=60, batch_size=4, shard_size=5)
    assert again.num_written == 0 and again.num_failed == len(failing)


def test_job_store_under_data_rewrite_store(text_corpus: str, codec, tmp_path: Path) -> None:
    cfg = _text_config([text_corpus], suffix_len=8, max_prefix_len=32,
                     rewrite_store=str(tmp_path / "stores"))
    rewrite_job(cfg, codec=codec, rewrite_fn=UppercaseRewriter(), num_samples=10)
    assert (store_dir_for(text_corpus, str(tmp_path / "stores")) / "store.json").is_file()
    assert not Path(text_corpus + ".rewrites").exists()
    other_n = _text_config([text_corpus], suffix_len=6, max_prefix_len=32,
                         rewrite_store=str(tmp_path / "stores"))
    with pytest.raises(ConfigError, match=r"^sip\.suffix_len"):
        run_samples(other_n, eod_id=EOD, num_samples=10)


def test_store_names_are_unique_per_dataset_path(tmp_path: Path) -> None:
    stores = str(tmp_path / "stores")
    first, second = store_dir_for(str(tmp_path / "a" / "train"), stores), store_dir_for(str(tmp_path / "b" / "train"), stores)
    assert first != second and first.parent == second.parent
    assert first.name.startswith("train.") and first.name.endswith(".rewrites")


def test_a_re_preprocessed_dataset_or_another_tokenizer_refuses_the_store(text_corpus: str, codec) -> None:
    cfg = _text_config([text_corpus], suffix_len=8, max_prefix_len=32)
    rewrite_job(cfg, codec=codec, rewrite_fn=UppercaseRewriter(), num_samples=10)
    run_samples(cfg, eod_id=EOD, num_samples=10)  # the store matches its dataset

    other_tokenizer = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer="gpt2"))
    with pytest.raises(ConfigError, match=r"^data\.tokenizer: 'gpt2', but the rewrite store .* holds tokens of 'embedded'"):
        run_samples(other_tokenizer, eod_id=EOD, num_samples=10)

    # Same number of documents, other tokens: only the index digest tells them apart.
    reader = RewriteStoreReader.open(store_dir_for(text_corpus, None))
    documents = IndexedDocuments(text_corpus, eod_id=EOD)
    write_docs(Path(text_corpus), [documents.tokens(d, 0, int(documents.text_lengths[d]) - 1)
                                   for d in range(documents.num_docs)])
    assert reader.meta.num_docs == documents.num_docs
    with pytest.raises(InputError, match=r"written for another version of text \(its \.idx digest differs"):
        run_samples(cfg, eod_id=EOD, num_samples=10)
