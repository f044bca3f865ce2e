"""Files that must survive a crash: write under a temporary name, fsync, rename, fsync the directory.

A rename is atomic but not durable on its own: after a power loss the directory may still hold
the old entry, or the new name may point at blocks that never reached the disk. Flushing the file
before the rename and the directory after it closes both gaps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, IO

_TMP_SUFFIX = ".tmp"


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root` (root included)."""
    for directory, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(directory) / name)
        fsync_path(Path(directory))


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """`write(stream)` into `path` so that `path` holds either the old or the whole new content."""
    path = Path(path)
    # The process id in the name: ranks writing the same file never share a temporary.
    partial = path.with_name(f"{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        with open(partial, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda stream: stream.write(text.encode("utf-8")))


def write_json_atomically(path: Path, value: Any) -> None:
    """Strict JSON (NaN and infinities are refused, as strict parsers refuse them)."""
    write_text_atomically(path, json.dumps(value, indent=1, allow_nan=False) + "\n")
