"""The rewrite store: rewrites and rollout-free judgments keyed by (document id, split position).

One store per dataset, beside it as `<prefix>.rewrites/` (or under `data.rewrite_store` as
`<name>.<hash of the dataset's absolute path>.rewrites/`, so datasets of one name do not share it):
```
store.json             manifest: what the store belongs to, and the committed shards
shard-00000.bin/.idx   a Megatron-Core indexed dataset: entry i's rewrite tokens (one document)
shard-00000.keys.npz   keys int64 [n, 2] = (doc id, split); judgments float32 [n, J] (NaN = none)
```
The manifest is the commit point: a shard exists only once the manifest lists it (written to a
temporary file and renamed). Shard files that the manifest does not list are leftovers of a crash;
readers ignore them and the writer deletes them. Keys do not depend on the seed: a rewrite of the
suffix at (doc, split) is valid for any run that draws that split.

Judgments are the ones that involve no rollout (e.g. safety of the suffix, rewrite vs suffix), so
they can be computed once ahead of training; their names are fixed when the store is created.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from megatron_sip.data.indexed import idx_path, open_indexed_dataset
from megatron_sip.errors import ConfigError, InputError

STORE_FORMAT = "megatron-sip-rewrite-store"
STORE_VERSION = 1
MANIFEST = "store.json"
_STORE_SUFFIX = ".rewrites"
_KEYS_SUFFIX = ".keys.npz"


def store_dir_for(prefix: str, rewrite_store: Optional[str]) -> Path:
    """Where the store of dataset `prefix` lives (see `data.rewrite_store`)."""
    if rewrite_store is None:
        return Path(prefix + _STORE_SUFFIX)
    path_hash = hashlib.sha256(str(Path(prefix).resolve()).encode()).hexdigest()[:12]
    return Path(rewrite_store) / f"{Path(prefix).name}.{path_hash}{_STORE_SUFFIX}"


def index_digest(prefix: str) -> str:
    """BLAKE2b of the dataset's `.idx` (document boundaries and lengths): a re-preprocessed corpus
    (another tokenizer or other documents) gets another digest even with the same document count.
    About 20 bytes per document are read, once per process (cached by size and mtime)."""
    stat = idx_path(prefix).stat()
    return _file_digest(str(idx_path(prefix).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def keys_path(store: Path, shard: str) -> Path:
    return store / (shard + _KEYS_SUFFIX)


@dataclass
class StoreMeta:
    """What a store was written for; a reader or writer with other values must not use it."""

    dataset: str
    """File name of the dataset prefix (for humans; identity is checked through index_digest)."""
    num_docs: int
    """Documents in the dataset when the store was created."""
    suffix_len: int
    """N of the rewritten suffixes."""
    tokenizer: str
    """Tokenizer spec the rewrite tokens come from."""
    judgments: List[str] = field(default_factory=list)
    """Names of the judgment columns."""
    index_digest: str = ""
    """`index_digest` of the dataset the store was written for ("" = none recorded)."""


@dataclass
class Manifest:
    meta: StoreMeta
    shards: List[Dict[str, int | str]] = field(default_factory=list)
    """Committed shards in order: {"name": ..., "num_entries": ...}."""

    def to_json(self) -> str:
        return json.dumps({"format": STORE_FORMAT, "version": STORE_VERSION,
                           "meta": asdict(self.meta), "shards": self.shards}, indent=1)


def read_manifest(store: Path) -> Optional[Manifest]:
    """The store's manifest, None when there is no store; InputError when it is unreadable."""
    path = store / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != STORE_FORMAT or data.get("version") != STORE_VERSION:
            raise InputError(f"{path}: not a version-{STORE_VERSION} rewrite store manifest")
        return Manifest(meta=StoreMeta(**data["meta"]), shards=list(data["shards"]))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: corrupt rewrite store manifest ({exc})") from exc


def write_manifest(store: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically (temporary file, fsync, rename, fsync the directory)."""
    path = store / MANIFEST
    partial = path.with_name(MANIFEST + ".partial")
    with open(partial, "w") as stream:
        stream.write(manifest.to_json())
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, path)
    fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_meta(store: Path, found: StoreMeta, *, num_docs: int, suffix_len: int, tokenizer: str,
               digest: str) -> None:
    """Refuse a store written for another dataset, another tokenizer or another N."""
    if found.num_docs != num_docs or found.index_digest != digest:
        what = (f"a dataset of {found.num_docs} documents, this one has {num_docs}" if found.num_docs != num_docs
                else f"another version of {found.dataset} (its .idx digest differs: re-preprocessed or replaced)")
        raise InputError(f"{store}: written for {what}; move the store away or point data.rewrite_store "
                         "elsewhere, then rerun megatron-sip rewrite")
    if found.tokenizer != tokenizer:
        raise ConfigError("data.tokenizer", f"'{tokenizer}', but the rewrite store {store} holds tokens of "
                          f"'{found.tokenizer}'; set data.rewrite_store to another directory or rerun "
                          "megatron-sip rewrite")
    if found.suffix_len != suffix_len:
        raise ConfigError("sip.suffix_len", f"{suffix_len}, but the rewrite store {store} holds "
                          f"rewrites of {found.suffix_len}-token suffixes; set data.rewrite_store "
                          "to another directory or rerun megatron-sip rewrite")


@dataclass(frozen=True)
class StoredRewrite:
    tokens: np.ndarray
    """int64 rewrite token ids (at most N)."""
    judgments: Dict[str, float]
    """Judgment name -> score for the judgments that were made."""


def encode_keys(doc_ids: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """One sortable int64 per (doc id, split): doc ids < 2**31, splits < 2**32."""
    return (np.asarray(doc_ids, dtype=np.int64) << 32) | np.asarray(splits, dtype=np.int64)


class RewriteStoreReader:
    """Look up stored rewrites; sees exactly the shards committed when it was opened."""

    def __init__(self, store: Path, manifest: Manifest) -> None:
        self.store = store
        self.meta = manifest.meta
        self._shards = [open_indexed_dataset(str(store / s["name"])) for s in manifest.shards]
        keys, judgments, where = [], [], []
        for index, shard in enumerate(manifest.shards):
            with np.load(keys_path(store, str(shard["name"]))) as arrays:
                keys.append(arrays["keys"])
                judgments.append(arrays["judgments"])
            rows = np.arange(keys[-1].shape[0], dtype=np.int64)
            where.append(np.stack([np.full_like(rows, index), rows], axis=1))
        num_judgments = len(self.meta.judgments)
        all_keys = np.concatenate(keys) if keys else np.zeros((0, 2), dtype=np.int64)
        codes = encode_keys(all_keys[:, 0], all_keys[:, 1])
        order = np.argsort(codes, kind="stable")
        self._codes = codes[order]
        self._where = (np.concatenate(where) if where else np.zeros((0, 2), np.int64))[order]
        self._judgments = (np.concatenate(judgments) if judgments
                           else np.zeros((0, num_judgments), np.float32))[order]
        self.keys = all_keys

    @classmethod
    def open(cls, store: Path) -> Optional["RewriteStoreReader"]:
        """The reader of `store`, or None when no store exists there."""
        manifest = read_manifest(store)
        return None if manifest is None else cls(store, manifest)

    @property
    def num_entries(self) -> int:
        return int(self._codes.shape[0])

    def get(self, doc_id: int, split: int) -> Optional[StoredRewrite]:
        """The stored rewrite of (doc_id, split), or None."""
        code = int(encode_keys(doc_id, split))
        # The last of equal keys wins (side="right" - 1): later shards override earlier ones.
        pos = int(np.searchsorted(self._codes, code, side="right")) - 1
        if pos < 0 or self._codes[pos] != code:
            return None
        shard, row = self._where[pos]
        tokens = np.array(self._shards[shard][int(row)], dtype=np.int64)  # a copy, see documents.py
        scores = self._judgments[pos]
        judgments = {name: float(score) for name, score in zip(self.meta.judgments, scores)
                     if not np.isnan(score)}
        return StoredRewrite(tokens=tokens, judgments=judgments)
