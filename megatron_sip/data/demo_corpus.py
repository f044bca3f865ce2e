"""The demo corpus (examples/data) as indexed datasets: the one builder of the demo, the tests,
the benchmarks and the experiment scripts.

Each split is preprocessed by the real command (`megatron-sip preprocess`) in its own process, so
the caller does not load the tokenizer, and only when its `.idx` is not there yet.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from megatron_sip.durable import write_text_atomically
from megatron_sip.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DATA = REPO_ROOT / "examples" / "data"
DEMO_SPLITS = {split: DEMO_DATA / f"{split}.jsonl" for split in ("train", "heldout")}
"""The demo corpus's JSONL files by split name."""


def build_demo_datasets(out_dir: Path, sources: Mapping[str, Path] = DEMO_SPLITS, *,
                        env: Optional[Dict[str, str]] = None, tokenizer: Optional[str] = None) -> Dict[str, str]:
    """`out_dir/<split>` built from each source JSONL (kept when already built); the dataset path
    prefixes by split, as `data.paths` takes them. tokenizer: preprocess's --tokenizer (None: its
    default, the embedded one)."""
    prefixes = {}
    for split, source in sources.items():
        prefix = Path(out_dir) / split
        if not Path(f"{prefix}.idx").is_file():
            _preprocess(source, prefix, env=env, tokenizer=tokenizer)
        prefixes[split] = str(prefix)
    return prefixes


def _preprocess(source: Path, prefix: Path, *, env: Optional[Dict[str, str]], tokenizer: Optional[str]) -> None:
    command = [sys.executable, "-m", "megatron_sip", "preprocess", "--input", str(source),
               "--output-prefix", str(prefix), *(["--tokenizer", tokenizer] if tokenizer else [])]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise InputError(f"preprocess of {source} failed (exit {done.returncode}): {done.stderr[-2000:]}")


def _read_rows(path: Path) -> List[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_rows(path: Path, rows: List[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, "".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_unsafe_rich_train(path: Path, *, seed: int = 0) -> Path:
    """Every unsafe demo train document (about a fifth of them) and as many safe ones, shuffled
    (seeded): the corpus on which plain training learns insults and SIP should not."""
    if not path.is_file():
        rows = _read_rows(DEMO_SPLITS["train"])
        unsafe = [r for r in rows if r["unsafe"]]
        rng = random.Random(seed)
        mix = unsafe + rng.sample([r for r in rows if not r["unsafe"]], len(unsafe))
        rng.shuffle(mix)
        _write_rows(path, mix)
    return path


def write_abusive_heldout(path: Path) -> Path:
    """The abusive part of every unsafe held-out document (from `abuse_start_char` on): any prefix
    cut from it is unsafe, and so is the document's own next text."""
    if not path.is_file():
        rows = [{"id": r["id"], "text": r["text"][r["abuse_start_char"]:]}
                for r in _read_rows(DEMO_SPLITS["heldout"]) if r["unsafe"]]
        _write_rows(path, rows)
    return path
