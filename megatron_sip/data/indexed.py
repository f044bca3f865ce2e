"""Megatron-Core indexed datasets (`P.bin` + `P.idx`): checked opening and crash-safe writing.

Megatron-Core's `IndexedDataset` trusts its files (a bad header is an `assert`, a truncated file
an obscure numpy error at first read). `open_indexed_dataset` checks the layout first and raises
an `InputError` naming the file, then hands over to Megatron-Core's reader.

`AtomicIndexedWriter` writes with Megatron-Core's own `IndexedDatasetBuilder` under temporary
names (`P.bin.partial`, `P.idx.partial`) that never form a dataset, and renames them at commit:
an interrupted write never leaves a complete-looking `P.bin`/`P.idx` pair behind.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from types import TracebackType
from typing import Optional, Type

import numpy as np

from megatron_sip.errors import InputError

_HEADER = b"MMIDIDX\x00\x00"
_HEADER_BYTES = len(_HEADER) + 8 + 1 + 8 + 8  # magic, version, dtype code, sequences, documents
_PARTIAL = ".partial"


def idx_path(prefix: str) -> Path:
    return Path(prefix + ".idx")


def bin_path(prefix: str) -> Path:
    return Path(prefix + ".bin")


def indexed_dataset_exists(prefix: str) -> bool:
    """Both files present (what Megatron-Core calls existing; contents unchecked)."""
    return idx_path(prefix).is_file() and bin_path(prefix).is_file()


def token_dtype(vocab_size: int) -> Type[np.number]:
    """Megatron-Core's choice of token dtype for a vocabulary (uint16 below 65500, else int32)."""
    from megatron.core.datasets.indexed_dataset import DType

    return DType.optimal_dtype(vocab_size)


def open_indexed_dataset(prefix: str):
    """Megatron-Core's `IndexedDataset` at `prefix`, after checking that its files are whole."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    check_indexed_files(prefix)
    return IndexedDataset(prefix, multimodal=False, mmap=True)


def check_indexed_files(prefix: str) -> None:
    """Check header, index arrays and both file sizes; InputError naming the file at fault."""
    from megatron.core.datasets.indexed_dataset import DType

    idx, bin_ = idx_path(prefix), bin_path(prefix)
    for path in (idx, bin_):
        if not path.is_file():
            partial = any(Path(str(p) + _PARTIAL).exists() for p in (idx, bin_))
            hint = " (an interrupted write left only .partial files)" if partial else ""
            raise InputError(f"{path}: no such file{hint}")
    with open(idx, "rb") as stream:
        head = stream.read(_HEADER_BYTES)
    if len(head) < _HEADER_BYTES:
        raise InputError(f"{idx}: truncated index ({len(head)} bytes, the header alone is "
                         f"{_HEADER_BYTES})")
    if head[: len(_HEADER)] != _HEADER:
        raise InputError(f"{idx}: not a Megatron indexed-dataset index (bad magic bytes)")
    version, code, num_sequences, num_documents = struct.unpack("<QBQQ", head[len(_HEADER):])
    if version != 1:
        raise InputError(f"{idx}: unsupported index version {version} (expected 1)")
    try:
        itemsize = DType.size(int(code))
    except ValueError as exc:
        raise InputError(f"{idx}: unknown token dtype code {code}") from exc
    expected = _HEADER_BYTES + 12 * num_sequences + 8 * num_documents
    actual = idx.stat().st_size
    if actual == expected + num_sequences and num_sequences:
        raise InputError(f"{idx}: multimodal indexed datasets are not supported")
    if actual != expected:
        state = "truncated" if actual < expected else "has trailing bytes"
        raise InputError(f"{idx}: {state} ({actual} bytes, expected {expected} for "
                         f"{num_sequences} sequences and {max(num_documents, 1) - 1} documents)")
    if num_documents < 2:
        raise InputError(f"{idx}: holds no document")
    _check_index_arrays(idx, bin_, num_sequences, num_documents, itemsize)


def _check_index_arrays(idx: Path, bin_: Path, num_sequences: int, num_documents: int,
                        itemsize: int) -> None:
    """The arrays Megatron-Core would only `assert` on, read the way its `_IndexReader` does."""
    raw = np.memmap(idx, dtype=np.uint8, mode="r")
    offset = _HEADER_BYTES
    lengths = np.frombuffer(raw, dtype=np.int32, count=num_sequences, offset=offset).astype(np.int64)
    offset += 4 * num_sequences
    pointers = np.frombuffer(raw, dtype=np.int64, count=num_sequences, offset=offset)
    offset += 8 * num_sequences
    documents = np.frombuffer(raw, dtype=np.int64, count=num_documents, offset=offset)
    if documents[0] != 0 or documents[-1] != num_sequences or np.any(np.diff(documents) < 0):
        raise InputError(f"{idx}: corrupt document indices")
    if np.any(lengths < 0):
        raise InputError(f"{idx}: corrupt sequence lengths")
    ends = np.cumsum(lengths) * itemsize
    if num_sequences and (pointers[0] != 0 or np.any(pointers[1:] != ends[:-1])):
        raise InputError(f"{idx}: sequences are not stored contiguously (corrupt pointers)")
    needed = int(ends[-1]) if num_sequences else 0
    actual = bin_.stat().st_size
    if actual == 0:
        raise InputError(f"{bin_}: empty data file")
    if actual != needed:
        state = "truncated" if actual < needed else "longer than its index says"
        raise InputError(f"{bin_}: {state} ({actual} bytes, the index needs {needed})")
    del raw


class AtomicIndexedWriter:
    """Write documents with Megatron-Core's builder; `commit()` makes `P.bin`/`P.idx` appear.

    Use as a context manager: leaving it without `commit()` (an exception, Ctrl-C) deletes the
    partial files. A killed process leaves only `*.partial` files, which the next write replaces.
    """

    def __init__(self, prefix: str, *, dtype: Type[np.number]) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.prefix = prefix
        self._partial_bin = Path(str(bin_path(prefix)) + _PARTIAL)
        self._partial_idx = Path(str(idx_path(prefix)) + _PARTIAL)
        self._partial_bin.parent.mkdir(parents=True, exist_ok=True)
        self._builder = IndexedDatasetBuilder(str(self._partial_bin), dtype=dtype)
        self._dtype = dtype
        self.num_documents = 0
        self.num_tokens = 0
        self._done = False

    def add_document(self, tokens: np.ndarray) -> None:
        """Append one document (one sequence) of token ids."""
        array = np.asarray(tokens, dtype=self._dtype)
        self._builder.add_document(array, [array.size])
        self.num_documents += 1
        self.num_tokens += int(array.size)

    def commit(self) -> None:
        """Finish the index, flush both files to disk and rename them into place."""
        self._builder.finalize(str(self._partial_idx))
        for path in (self._partial_bin, self._partial_idx):
            _fsync(path)
        # The old index goes first: between the two renames only a lone .bin exists, never a
        # new .bin beside a stale .idx that would look complete.
        idx_path(self.prefix).unlink(missing_ok=True)
        os.replace(self._partial_bin, bin_path(self.prefix))
        os.replace(self._partial_idx, idx_path(self.prefix))
        _fsync(idx_path(self.prefix).parent)
        self._done = True

    def abort(self) -> None:
        """Close and delete the partial files."""
        if self._done:
            return
        self._builder.data_file.close()
        self._partial_bin.unlink(missing_ok=True)
        self._partial_idx.unlink(missing_ok=True)
        self._done = True

    def __enter__(self) -> "AtomicIndexedWriter":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.abort()


def _fsync(path: Path) -> None:
    """Flush a file or directory entry to disk (a rename is only durable once its directory is)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_MAX_ID_SUFFIX = ".max_token_id.json"
_SCAN_TOKENS = 1 << 24


def max_token_id(prefix: str) -> int:
    """The largest token id in `P.bin`: one scan per dataset, remembered in `P.max_token_id.json`
    (keyed by the size and mtime of both files; not written where the directory is read-only)."""
    from megatron_sip.durable import write_json_atomically

    key = [[path.stat().st_size, path.stat().st_mtime_ns] for path in (bin_path(prefix), idx_path(prefix))]
    record = Path(prefix + _MAX_ID_SUFFIX)
    try:
        saved = json.loads(record.read_text())
        if saved["key"] == key:
            return int(saved["max_token_id"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, stale or unreadable: scan
    largest = _scan_max_token_id(prefix)
    try:
        write_json_atomically(record, {"key": key, "max_token_id": largest})
    except OSError:
        pass  # a read-only dataset directory: scan again next time
    return largest


def _scan_max_token_id(prefix: str) -> int:
    from megatron.core.datasets.indexed_dataset import DType

    with open(idx_path(prefix), "rb") as stream:
        code = struct.unpack("<B", stream.read(_HEADER_BYTES)[len(_HEADER) + 8:len(_HEADER) + 9])[0]
    tokens = np.memmap(bin_path(prefix), dtype=DType.dtype_from_code(code), mode="r")
    largest = 0
    for start in range(0, tokens.shape[0], _SCAN_TOKENS):
        largest = max(largest, int(tokens[start:start + _SCAN_TOKENS].max()))
    del tokens
    return largest
