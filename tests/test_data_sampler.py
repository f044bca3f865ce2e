"""The SIP sampler on Megatron-Core's dataset builder: exact cuts, determinism, resume, disjoint
and complete DP shards, blends that follow their weights, collation masks, and its errors."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from megatron_sip.data.batching import (global_batch_micro_batches, iterate_micro_batches,
                                        micro_batch_indices, sip_data_loader)
from megatron_sip.data.collate import collate_sip, pack_sequences
from megatron_sip.data.dataset import SIPSample
from megatron_sip.errors import ConfigError, InputError
from tests.test_data_helpers import EOD, random_docs, run_config, run_samples, write_docs

N = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("corpus")
    docs_a = random_docs(120, min_len=5, max_len=200, seed=1)
    docs_b = random_docs(60, min_len=30, max_len=120, seed=2)
    return {"a": write_docs(root / "a", docs_a), "b": write_docs(root / "b", docs_b),
            "docs_a": docs_a, "docs_b": docs_b}


def _keys(samples: List[SIPSample]) -> List[tuple]:
    return [(s.dataset_id, s.doc_id, s.split) for s in samples]


def test_every_sample_is_an_exact_cut(corpus) -> None:
    source = run_samples(run_config([corpus["a"]], samples_per_doc=2), eod_id=EOD,
                               num_samples=500)
    docs = corpus["docs_a"]
    for i in range(0, 500, 3):
        s = source[i]
        doc = docs[s.doc_id]
        assert len(s.suffix) == N
        assert s.suffix.tolist() == doc[s.split: s.split + N].tolist()
        assert 4 <= len(s.prefix) <= 64
        assert s.prefix.tolist() == doc[max(0, s.split - 64): s.split].tolist()
        assert EOD not in s.suffix.tolist()
    skipped = sum(len(d) < 4 + N for d in docs)
    assert source.num_skipped_docs == {corpus["a"]: skipped} and skipped > 0


def test_same_seed_same_samples_other_seed_other_samples(corpus) -> None:
    cfg = run_config([corpus["a"]])
    first = _keys([run_samples(cfg, eod_id=EOD, num_samples=80)[i] for i in range(80)])
    again = _keys([run_samples(cfg, eod_id=EOD, num_samples=80)[i] for i in range(80)])
    other = _keys([run_samples(run_config([corpus["a"]], seed=99), eod_id=EOD,
                                     num_samples=80)[i] for i in range(80)])
    assert first == again
    assert sum(a != b for a, b in zip(first, other)) > 60


def test_sample_order_does_not_depend_on_the_number_built(corpus) -> None:
    for paths in ([corpus["a"]], [0.3, corpus["a"], 0.7, corpus["b"]]):
        cfg = run_config(paths)
        small = run_samples(cfg, eod_id=EOD, num_samples=50)
        large = run_samples(cfg, eod_id=EOD, num_samples=2000)
        assert _keys([small[i] for i in range(50)]) == _keys([large[i] for i in range(50)])


def test_resume_reads_the_tail_of_an_uninterrupted_run(corpus) -> None:
    source = run_samples(run_config([corpus["a"]]), eod_id=EOD, num_samples=200)
    for rank in range(2):
        kwargs = dict(micro_batch_size=3, dp_rank=rank, dp_size=2, pad_id=EOD)
        full = list(iterate_micro_batches(source, consumed_samples=0, **kwargs))
        resumed = list(iterate_micro_batches(source, consumed_samples=60, **kwargs))
        assert len(full) == len(resumed) + 10
        for a, b in zip(full[10:], resumed):
            assert torch.equal(a.doc_ids_B, b.doc_ids_B) and torch.equal(a.splits_B, b.splits_B)
            assert torch.equal(a.suffix.tokens_BS, b.suffix.tokens_BS)


def test_step_at_a_time_equals_the_stream(corpus) -> None:
    source = run_samples(run_config([corpus["a"]]), eod_id=EOD, num_samples=64)
    stream = list(iterate_micro_batches(source, consumed_samples=0, micro_batch_size=2, dp_rank=1,
                                        dp_size=2, pad_id=EOD, seq_length=79))
    steps = [batch for step in range(4) for batch in global_batch_micro_batches(
        source, consumed_samples=16 * step, global_batch_size=16, micro_batch_size=2, dp_rank=1,
        dp_size=2, pad_id=EOD, seq_length=79)]
    assert len(steps) == 16 and len(stream) >= 16
    for a, b in zip(stream, steps):
        assert torch.equal(a.suffix.tokens_BS, b.suffix.tokens_BS) and a.suffix.tokens_BS.shape[1] == 79
    with pytest.raises(ValueError, match="multiple"):
        global_batch_micro_batches(source, consumed_samples=0, global_batch_size=6,
                                   micro_batch_size=2, dp_rank=0, dp_size=2, pad_id=EOD)


@pytest.mark.parametrize("dp_size, micro_batch_size", [(1, 4), (2, 2), (3, 1), (4, 3)])
def test_dp_shards_are_disjoint_and_complete(dp_size: int, micro_batch_size: int) -> None:
    total = 97
    shards = [sum(micro_batch_indices(total_samples=total, consumed_samples=5,
                                      micro_batch_size=micro_batch_size, dp_rank=r,
                                      dp_size=dp_size), []) for r in range(dp_size)]
    seen = sorted(sum(shards, []))
    assert len(seen) == len(set(seen))
    block = micro_batch_size * dp_size
    assert seen == list(range(5, 5 + (total - 5) // block * block))


def test_dp_ranks_together_see_the_global_sample_order(corpus) -> None:
    source = run_samples(run_config([corpus["a"]]), eod_id=EOD, num_samples=64)
    per_rank = [[int(d) for b in iterate_micro_batches(source, consumed_samples=0, micro_batch_size=2,
                                                       dp_rank=r, dp_size=2, pad_id=EOD)
                 for d in b.doc_ids_B] for r in range(2)]
    interleaved = [per_rank[r][2 * k + j] for k in range(16) for r in range(2) for j in range(2)]
    assert interleaved == [source[i].doc_id for i in range(64)]


def test_blend_follows_its_weights(corpus) -> None:
    cfg = run_config([0.25, corpus["a"], 0.75, corpus["b"]])
    source = run_samples(cfg, eod_id=EOD, num_samples=4000)
    ids = np.array([source[i].dataset_id for i in range(4000)])
    for n in (100, 1000, 4000):  # Megatron's blending index keeps every prefix on target
        assert abs(ids[:n].mean() - 0.75) < 0.02
    assert source.prefixes == [corpus["a"], corpus["b"]]
    sample = source[int(np.flatnonzero(ids == 1)[0])]
    doc = corpus["docs_b"][sample.doc_id]
    assert sample.suffix.tolist() == doc[sample.split: sample.split + N].tolist()


def test_unweighted_blend_weighs_by_samples_per_epoch(corpus) -> None:
    source = run_samples(run_config([corpus["a"], corpus["b"]]), eod_id=EOD, num_samples=3000)
    sizes = [ds.schedule.samples_per_epoch for ds in source.datasets]
    ids = np.array([source[i].dataset_id for i in range(3000)])
    assert abs(ids.mean() - sizes[1] / sum(sizes)) < 0.02
    assert len(source) >= 3000  # more than one epoch of the blend: no cap


def test_epochs_repeat_documents_with_new_splits(corpus) -> None:
    source = run_samples(run_config([corpus["b"]]), eod_id=EOD, num_samples=150)
    per_epoch = source.datasets[0].schedule.samples_per_epoch
    assert per_epoch == 60 and len(source) == 180
    first = {source[i].doc_id: source[i].split for i in range(60)}
    second = {source[i].doc_id: source[i].split for i in range(60, 120)}
    assert sorted(first) == sorted(second) == list(range(60))
    assert sum(first[d] != second[d] for d in first) > 40


def test_synthetic_samples_without_paths() -> None:
    source = run_samples(run_config([]), eod_id=None, num_samples=40)
    sample = source[3]
    assert len(sample.suffix) == N and 4 <= len(sample.prefix) <= 64
    assert source.prefixes == ["synthetic"]
    assert (sample.suffix > 0).all() and (sample.suffix < 1000).all()


def test_collate_masks_cover_exactly_the_suffix(corpus) -> None:
    source = run_samples(run_config([corpus["a"]]), eod_id=EOD, num_samples=8)
    samples = [source[i] for i in range(5)]
    batch = collate_sip(samples, pad_id=EOD)
    lm = batch.suffix
    longest = max(len(s.prefix) + N for s in samples)
    assert lm.tokens_BS.shape == lm.labels_BS.shape == lm.loss_mask_BS.shape == (5, longest - 1)
    assert lm.position_ids_BS[3].tolist() == list(range(longest - 1))
    for b, s in enumerate(samples):
        p = len(s.prefix)
        assert batch.prefix_tokens(b).tolist() == s.prefix.tolist()
        assert batch.suffix_tokens(b).tolist() == s.suffix.tolist()
        mask = lm.loss_mask_BS[b]
        assert mask.sum() == N and mask[p - 1: p - 1 + N].eq(1).all()
        assert lm.labels_BS[b][mask.bool()].tolist() == s.suffix.tolist()
        assert batch.lm_loss_mask_BS[b].sum() == p + N - 1
        row = s.prefix.tolist() + s.suffix.tolist()
        assert lm.tokens_BS[b, : p + N - 1].tolist() == row[:-1]
        assert lm.labels_BS[b, : p + N - 1].tolist() == row[1:]
        assert lm.tokens_BS[b, p + N:].eq(EOD).all()  # right padding
    assert batch.rewrite is None and not batch.has_rewrite_B.any()
    assert batch.doc_ids_B.tolist() == [s.doc_id for s in samples]


def test_pack_sequences_pads_to_a_static_length() -> None:
    batch = pack_sequences([np.array([5, 6]), np.array([7])], [np.array([8, 9, 10]), np.array([])],
                           pad_id=0, seq_length=6)
    assert batch.tokens_BS.tolist() == [[5, 6, 8, 9, 10, 0], [7, 0, 0, 0, 0, 0]]
    assert batch.prefix_lengths_B.tolist() == [2, 1]
    assert batch.labels_BS.tolist()[0] == [6, 8, 9, 10, 0, 0]
    assert batch.loss_mask_BS.tolist() == [[0, 1, 1, 1, 0, 0], [0] * 6]
    with pytest.raises(ValueError, match="shorter"):
        pack_sequences([np.array([1, 2, 3])], [np.array([4, 5])], pad_id=0, seq_length=3)


def test_data_loader_matches_the_plain_iterator_and_the_source_pickles(corpus) -> None:
    source = run_samples(run_config([corpus["a"]]), eod_id=EOD, num_samples=40)
    plain = list(iterate_micro_batches(source, consumed_samples=8, micro_batch_size=2, dp_rank=1,
                                       dp_size=2, pad_id=EOD))
    loader = sip_data_loader(source, consumed_samples=8, micro_batch_size=2, dp_rank=1, dp_size=2,
                             pad_id=EOD)
    assert len(loader) == len(plain) == (len(source) - 8) // 4
    for a, b in zip(loader, plain):
        assert torch.equal(a.suffix.tokens_BS, b.suffix.tokens_BS)
    copy = pickle.loads(pickle.dumps(source))  # DataLoader workers may receive it pickled
    assert _keys([copy[i] for i in range(10)]) == _keys([source[i] for i in range(10)])


def test_suffix_longer_than_every_document(corpus) -> None:
    with pytest.raises(ConfigError) as info:
        run_samples(run_config([corpus["b"]], suffix_len=200, max_prefix_len=64),
                          eod_id=EOD, num_samples=10)
    longest = max(len(doc) for doc in corpus["docs_b"])
    assert str(info.value).startswith("sip.suffix_len")
    assert f"longest has {longest})" in str(info.value)


def test_missing_or_corrupt_datasets_in_a_blend(corpus, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        run_samples(run_config([0.5, corpus["a"], 0.5, str(tmp_path / "gone")]), eod_id=EOD)
    assert str(info.value).startswith("data.paths") and "gone" in str(info.value)
    broken = write_docs(tmp_path / "broken", random_docs(5, min_len=40, max_len=50))
    Path(broken + ".bin").write_bytes(Path(broken + ".bin").read_bytes()[:-4])
    with pytest.raises(InputError, match=r"broken\.bin: truncated"):
        run_samples(run_config([corpus["a"], broken]), eod_id=EOD)


def test_eval_paths_build_separately(corpus) -> None:
    cfg = run_config([corpus["a"]])
    with pytest.raises(ConfigError, match="data.eval_paths"):
        run_samples(cfg, eod_id=EOD, paths_key="data.eval_paths")
    cfg.data.eval_paths = [corpus["b"]]
    source = run_samples(cfg, eod_id=EOD, paths_key="data.eval_paths", num_samples=10)
    assert source.prefixes == [corpus["b"]]
