"""The demo corpus (examples/data) as indexed datasets: the one builder of the demo, the tests,
the benchmarks and the experiment scripts.

Each split is preprocessed by the real command (`megatron-sip preprocess`) in its own process, so
the caller does not load the tokenizer, and only when its `.idx` is not there yet.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional

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
