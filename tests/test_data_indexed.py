"""Indexed datasets: written with Megatron-Core's builder, read by its IndexedDataset, corrupt or
truncated files named in one-line errors, and writes that never look complete until they are."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_sip.data.documents import IndexedDocuments
from megatron_sip.data.indexed import AtomicIndexedWriter, indexed_dataset_exists, open_indexed_dataset
from megatron_sip.errors import InputError
from tests.test_data_helpers import random_docs, write_docs


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    return write_docs(tmp_path / "corpus", random_docs(20, min_len=1, max_len=50))


def test_megatron_reads_what_we_write(tmp_path: Path) -> None:
    docs = random_docs(20, min_len=1, max_len=50)
    prefix = write_docs(tmp_path / "corpus", docs)
    megatron = IndexedDataset(prefix)
    assert len(megatron) == 20 and len(megatron.document_indices) == 21
    for i, doc in enumerate(docs):
        assert megatron[i].tolist() == doc.tolist() + [0]
    assert megatron.index.dtype == np.uint16


def test_documents_leave_out_the_eod(tmp_path: Path) -> None:
    docs = [np.array([5, 6, 7]), np.array([0, 8]), np.array([9])]
    with_eod = IndexedDocuments(write_docs(tmp_path / "a", docs), eod_id=0)
    assert with_eod.text_lengths.tolist() == [3, 2, 1]
    assert with_eod.tokens(1, 0, 2).tolist() == [0, 8]
    assert with_eod.tokens(0, 1, 3).dtype == np.int64
    unknown = IndexedDocuments(write_docs(tmp_path / "c", docs), eod_id=None)
    assert unknown.text_lengths.tolist() == [4, 3, 2]


def test_a_document_of_several_sequences(tmp_path: Path) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = str(tmp_path / "sentences")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    builder.add_document(np.array([1, 2, 3, 4, 5, 0]), [2, 3, 1])  # Megatron's --split-sentences
    builder.add_document(np.array([6, 7, 0]), [3])
    builder.finalize(prefix + ".idx")
    documents = IndexedDocuments(prefix, eod_id=0)
    assert documents.num_docs == 2 and documents.text_lengths.tolist() == [5, 2]
    assert documents.tokens(0, 1, 5).tolist() == [2, 3, 4, 5]
    assert documents.tokens(1, 0, 2).tolist() == [6, 7]


def _one_line_error(prefix: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        open_indexed_dataset(prefix)
    message = str(info.value)
    assert "\n" not in message and fragment in message, message


def test_missing_files_are_named(dataset: str) -> None:
    Path(dataset + ".idx").unlink()
    _one_line_error(dataset, "corpus.idx: no such file")
    _one_line_error(dataset + "-other", "corpus-other.idx: no such file")


@pytest.mark.parametrize("cut, fragment", [(5, "truncated index"), (40, "truncated (")])
def test_truncated_index(dataset: str, cut: int, fragment: str) -> None:
    idx = Path(dataset + ".idx")
    idx.write_bytes(idx.read_bytes()[:cut])
    _one_line_error(dataset, fragment)


def test_index_with_trailing_bytes_bad_magic_or_version(dataset: str) -> None:
    idx = Path(dataset + ".idx")
    good = idx.read_bytes()
    idx.write_bytes(good + b"\x00" * 3)
    _one_line_error(dataset, "trailing bytes")
    idx.write_bytes(b"NOTANIDX!" + good[9:])
    _one_line_error(dataset, "bad magic")
    idx.write_bytes(good[:9] + struct.pack("<Q", 2) + good[17:])
    _one_line_error(dataset, "version 2")
    idx.write_bytes(good[:17] + b"\x63" + good[18:])
    _one_line_error(dataset, "dtype code 99")


def test_corrupt_document_indices(dataset: str) -> None:
    idx = Path(dataset + ".idx")
    data = bytearray(idx.read_bytes())
    data[-8:] = struct.pack("<q", 3)  # the last document boundary no longer covers all sequences
    idx.write_bytes(bytes(data))
    _one_line_error(dataset, "corrupt document indices")


@pytest.mark.parametrize("change, fragment", [(-2, "truncated"), (+2, "longer than its index")])
def test_bin_size_must_match_the_index(dataset: str, change: int, fragment: str) -> None:
    bin_ = Path(dataset + ".bin")
    data = bin_.read_bytes()
    bin_.write_bytes(data[:change] if change < 0 else data + b"\x00" * change)
    _one_line_error(dataset, f"corpus.bin: {fragment}")


def test_empty_bin(dataset: str) -> None:
    Path(dataset + ".bin").write_bytes(b"")
    _one_line_error(dataset, "corpus.bin")


def test_an_unfinished_write_never_looks_complete(tmp_path: Path) -> None:
    prefix = str(tmp_path / "corpus")
    writer = AtomicIndexedWriter(prefix, dtype=np.uint16)
    writer.add_document(np.array([1, 2, 3]))
    # The process "dies" here: neither commit nor abort runs.
    assert not indexed_dataset_exists(prefix)
    assert Path(prefix + ".bin.partial").exists()
    _one_line_error(prefix, "interrupted write")
    # The next write replaces the partial files and completes.
    with AtomicIndexedWriter(prefix, dtype=np.uint16) as again:
        again.add_document(np.array([4, 5]))
        again.commit()
    reread = IndexedDataset(prefix)  # kept alive: Megatron unmaps the file when it is collected
    assert reread[0].tolist() == [4, 5]
    assert not Path(prefix + ".bin.partial").exists()


def test_an_aborted_write_removes_its_files_and_keeps_the_old_dataset(tmp_path: Path) -> None:
    prefix = write_docs(tmp_path / "corpus", [np.array([7, 7])])
    with pytest.raises(KeyboardInterrupt):
        with AtomicIndexedWriter(prefix, dtype=np.uint16) as writer:
            writer.add_document(np.array([1, 2, 3]))
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.bin", "corpus.idx"]
    reread = IndexedDataset(prefix)
    assert reread[0].tolist() == [7, 7, 0]
