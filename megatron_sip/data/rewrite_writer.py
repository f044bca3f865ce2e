"""Appending to a rewrite store in shards, exactly once across crashes and restarts.

`add()` buffers entries; `commit()` writes them as one shard (tokens through Megatron-Core's
builder, then the keys file, then the manifest that lists the shard: the commit point). A crash
before the manifest rename loses only the uncommitted buffer, which a restarted job recomputes
because `contains()` does not know those keys; a crash after it leaves the shard committed, and
`contains()` makes the restarted job skip its keys. Either way no entry is lost or duplicated.
An exclusive lock on `store.lock` keeps two writers off one store.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Dict, Mapping, Optional, Type

import numpy as np

from megatron_sip.data.indexed import AtomicIndexedWriter, token_dtype
from megatron_sip.data.rewrite_store import (Manifest, RewriteStoreReader, StoreMeta,
                                             check_meta, encode_keys, keys_path, read_manifest,
                                             shard_name, write_manifest)
from megatron_sip.errors import InputError

_LOCK = "store.lock"


class RewriteStoreWriter:
    """The only writer of one store while it is open (use as a context manager)."""

    def __init__(self, store: Path, meta: StoreMeta, *, vocab_size: int) -> None:
        self.store = Path(store)
        self.store.mkdir(parents=True, exist_ok=True)
        self._lock: Optional[int] = _acquire_lock(self.store)
        try:
            self._manifest = self._load_or_create(meta)
            self._remove_uncommitted()
            reader = RewriteStoreReader(self.store, self._manifest)
        except BaseException:
            self.close()  # a refused store must not stay locked
            raise
        self._dtype = token_dtype(vocab_size)
        self._known = set(encode_keys(reader.keys[:, 0], reader.keys[:, 1]).tolist())
        self._pending: Dict[int, tuple] = {}

    @property
    def meta(self) -> StoreMeta:
        return self._manifest.meta

    @property
    def num_committed(self) -> int:
        return sum(int(shard["num_entries"]) for shard in self._manifest.shards)

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def contains(self, doc_id: int, split: int) -> bool:
        """Whether (doc_id, split) is committed or pending."""
        code = int(encode_keys(doc_id, split))
        return code in self._known or code in self._pending

    def add(self, doc_id: int, split: int, tokens: np.ndarray,
            judgments: Optional[Mapping[str, float]] = None) -> None:
        """Buffer one entry; a key already committed or pending is a programming error."""
        if self.contains(doc_id, split):
            raise ValueError(f"({doc_id}, {split}) is already in {self.store}")
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size == 0 or tokens.size > self.meta.suffix_len:
            raise ValueError(f"a rewrite has 1..{self.meta.suffix_len} tokens, got {tokens.size}")
        row = np.full(len(self.meta.judgments), np.nan, dtype=np.float32)
        for name, score in (judgments or {}).items():
            if name not in self.meta.judgments:
                raise ValueError(f"judgment '{name}' is not a column of {self.store} "
                                 f"({', '.join(self.meta.judgments) or 'none'})")
            row[self.meta.judgments.index(name)] = score
        self._pending[int(encode_keys(doc_id, split))] = (doc_id, split, tokens, row)

    def commit(self) -> int:
        """Write the buffered entries as one shard; the number written (0 when none)."""
        if not self._pending:
            return 0
        entries = list(self._pending.values())
        name = shard_name(len(self._manifest.shards))
        with AtomicIndexedWriter(str(self.store / name), dtype=self._dtype) as writer:
            for _, _, tokens, _ in entries:
                writer.add_document(tokens)
            writer.commit()
        keys = np.array([[doc, split] for doc, split, _, _ in entries], dtype=np.int64)
        judgments = np.stack([row for _, _, _, row in entries]).astype(np.float32)
        _save_npz_atomically(keys_path(self.store, name), keys=keys, judgments=judgments)
        shards = self._manifest.shards + [{"name": name, "num_entries": len(entries)}]
        write_manifest(self.store, Manifest(meta=self.meta, shards=shards))  # the commit point
        self._manifest = Manifest(meta=self.meta, shards=shards)
        self._known.update(self._pending)
        self._pending.clear()
        return len(entries)

    def close(self) -> None:
        """Release the lock; uncommitted entries are dropped (call `commit()` first)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> "RewriteStoreWriter":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    def _load_or_create(self, meta: StoreMeta) -> Manifest:
        manifest = read_manifest(self.store)
        if manifest is None:
            manifest = Manifest(meta=meta)
            write_manifest(self.store, manifest)
            return manifest
        check_meta(self.store, manifest.meta, num_docs=meta.num_docs, suffix_len=meta.suffix_len,
                   tokenizer=meta.tokenizer, digest=meta.index_digest)
        if manifest.meta.judgments != meta.judgments:
            raise InputError(f"{self.store}: holds judgments {manifest.meta.judgments}, this job "
                             f"writes {meta.judgments}; use another data.rewrite_store")
        return manifest

    def _remove_uncommitted(self) -> None:
        """Delete what a crashed writer left: files of shards the manifest does not list."""
        committed = {str(shard["name"]) for shard in self._manifest.shards}
        for path in self.store.iterdir():
            orphan = path.name.startswith("shard-") and path.name.split(".")[0] not in committed
            if orphan or path.name.endswith(".partial"):
                path.unlink()


def _acquire_lock(store: Path) -> int:
    fd = os.open(store / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise InputError(f"{store}: another megatron-sip rewrite is writing this store") from exc
    return fd


def _save_npz_atomically(path: Path, **arrays: np.ndarray) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as stream:
        np.savez(stream, **arrays)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, path)

