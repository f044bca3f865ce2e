"""Reading JSONL corpora line by line, with errors that name the file and line.

Lines are read as bytes and decoded here, so that a non-UTF-8 byte is reported at its line rather
than as a decoding error somewhere in the file. Blank lines are not documents and are skipped.
A line longer than `max_line_bytes` is a bad line and is never held in memory whole (a corpus
without newlines would otherwise be read into memory at once); JSON nested deeper than Python's
parser can recurse is a bad line too, not a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional, Sequence, Union

from megatron_sip.errors import InputError

DEFAULT_MAX_LINE_BYTES = 64 << 20
"""64 MiB: far above any document worth pretraining on, far below a machine's memory."""
_SKIP_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class RawLine:
    path: str
    line_no: int
    """1-based line number in `path`."""
    data: bytes
    """The line; empty when `too_long`."""
    too_long: Optional[int] = None
    """The limit the line exceeded (it was skipped unread), else None."""


@dataclass(frozen=True)
class BadLine:
    """A line that holds no document; `str()` is the one-line error."""

    path: str
    line_no: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_no}: {self.reason}"


def check_inputs(paths: Sequence[str]) -> None:
    """Every input exists, is a file and is not empty (checked before any work starts)."""
    if not paths:
        raise InputError("no input file given")
    for path in paths:
        p = Path(path)
        if not p.exists():
            raise InputError(f"{path}: no such file")
        if not p.is_file():
            raise InputError(f"{path}: not a file")
        if p.stat().st_size == 0:
            raise InputError(f"{path}: empty file (no JSON lines)")


def iter_chunks(paths: Sequence[str], chunk_size: int, *,
                max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[List[RawLine]]:
    """Non-blank lines of all files in order, `chunk_size` at a time."""
    chunk: List[RawLine] = []
    for path in paths:
        num_lines = 0
        with open(path, "rb") as stream:
            for line in _bounded_lines(path, stream, max_line_bytes):
                num_lines += 1
                chunk.append(line)
                if len(chunk) == chunk_size:
                    yield chunk
                    chunk = []
        if num_lines == 0:
            raise InputError(f"{path}: empty file (only blank lines)")
    if chunk:
        yield chunk


def _bounded_lines(path: str, stream: BinaryIO, max_line_bytes: int) -> Iterator[RawLine]:
    """Non-blank lines; one over the limit comes back as `too_long`, its rest skipped in blocks."""
    line_no = 0
    while True:
        data = stream.readline(max_line_bytes + 1)
        if not data:
            return
        line_no += 1
        if len(data) > max_line_bytes and not (len(data) == max_line_bytes + 1 and data.endswith(b"\n")):
            while data and not data.endswith(b"\n"):
                data = stream.readline(_SKIP_BLOCK_BYTES)
            yield RawLine(path=path, line_no=line_no, data=b"", too_long=max_line_bytes)
        elif data.strip():
            yield RawLine(path=path, line_no=line_no, data=data)


def parse_line(line: RawLine, key: str) -> Union[str, BadLine]:
    """The document text of `line`, or why it has none."""
    if line.too_long is not None:
        return BadLine(line.path, line.line_no, f"longer than {line.too_long} bytes (see --max-line-bytes)")
    try:
        text = line.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadLine(line.path, line.line_no, f"not UTF-8 (byte 0x{line.data[exc.start]:02x} at "
                       f"byte {exc.start + 1} of the line)")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadLine(line.path, line.line_no, f"invalid JSON ({exc.msg} at column {exc.colno})")
    except RecursionError:
        return BadLine(line.path, line.line_no, "JSON nested too deeply")
    if not isinstance(record, dict):
        return BadLine(line.path, line.line_no, f"a JSON {type(record).__name__}, not an object")
    if key not in record:
        keys = ", ".join(sorted(record)[:8]) or "none"
        return BadLine(line.path, line.line_no, f"no key '{key}' (keys: {keys}; see --json-key)")
    value = record[key]
    if not isinstance(value, str):
        return BadLine(line.path, line.line_no, f"'{key}' holds a {_json_type(value)}, not text")
    return value


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", bool: "boolean", int: "number", float: "number",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)

