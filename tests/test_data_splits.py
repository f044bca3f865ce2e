"""The split schedule: a pure, bijective, bounded map from sample index to (document, split)."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_sip.data.splits import SplitRule, SplitSchedule, permute


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 65, 1000, 4097])
def test_permute_is_a_bijection(size: int) -> None:
    for key in (0, 1, 2**63 + 5):
        out = permute(np.arange(size), size, key)
        assert sorted(out.tolist()) == list(range(size))


def test_permute_depends_on_the_key() -> None:
    a, b = permute(np.arange(500), 500, 1), permute(np.arange(500), 500, 2)
    assert (a != b).mean() > 0.9


def _schedule(samples_per_doc: int = 1, seed: int = 7, lengths=None) -> SplitSchedule:
    if lengths is None:
        lengths = np.random.default_rng(0).integers(1, 300, size=400)
    rule = SplitRule(suffix_len=16, min_prefix_len=8, max_prefix_len=64,
                     samples_per_doc=samples_per_doc, seed=seed)
    return SplitSchedule(np.asarray(lengths), rule)


def test_splits_leave_room_for_prefix_and_suffix() -> None:
    schedule = _schedule(samples_per_doc=2)
    lengths = np.random.default_rng(0).integers(1, 300, size=400)
    docs, splits = schedule.locate(np.arange(5 * schedule.samples_per_epoch))
    assert (splits >= 8).all()
    assert (splits + 16 <= lengths[docs]).all()
    assert (lengths[docs] >= 24).all()
    assert schedule.num_skipped_docs == int((lengths < 24).sum())


def test_each_epoch_uses_every_slot_once_and_splits_of_a_doc_differ() -> None:
    schedule = _schedule(samples_per_doc=3)
    per_epoch = schedule.samples_per_epoch
    for epoch in range(3):
        docs, splits = schedule.locate(np.arange(epoch * per_epoch, (epoch + 1) * per_epoch))
        counts = np.bincount(docs, minlength=400)
        assert set(counts[schedule.eligible_docs].tolist()) == {3}
        pairs = set(zip(docs.tolist(), splits.tolist()))
        lengths = np.random.default_rng(0).integers(1, 300, size=400)
        roomy = [d for d in schedule.eligible_docs if lengths[d] - 24 + 1 >= 3]
        assert all(len({s for d, s in pairs if d == doc}) == 3 for doc in roomy[:50])


def test_locate_is_a_pure_function_of_seed_epoch_and_index() -> None:
    schedule = _schedule()
    indices = np.random.default_rng(1).permutation(3 * schedule.samples_per_epoch)[:300]
    docs, splits = schedule.locate(indices)
    for i in range(0, 300, 37):
        d, s = _schedule().locate(np.array([indices[i]]))
        assert (d[0], s[0]) == (docs[i], splits[i])
    other_docs, _ = _schedule(seed=8).locate(indices)
    assert (other_docs != docs).mean() > 0.5


def test_epochs_are_ordered_differently() -> None:
    schedule = _schedule()
    n = schedule.samples_per_epoch
    first, _ = schedule.locate(np.arange(n))
    second, _ = schedule.locate(np.arange(n, 2 * n))
    assert sorted(first.tolist()) == sorted(second.tolist())
    assert (first != second).mean() > 0.5


def test_only_the_given_documents_are_sampled() -> None:
    lengths = np.full(100, 200)
    rule = SplitRule(suffix_len=16, min_prefix_len=8, max_prefix_len=64, samples_per_doc=1, seed=1)
    schedule = SplitSchedule(lengths, rule, doc_ids=np.arange(30, 60))
    docs, _ = schedule.locate(np.arange(schedule.samples_per_epoch))
    assert sorted(docs.tolist()) == list(range(30, 60))
