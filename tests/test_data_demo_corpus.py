"""The demo corpus in examples/data: reproducible, facts checkable on the held-out split, abuse
confined to the lexicon and to unsafe documents, and usable through preprocess and the sampler."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_sip.config import load_config
from megatron_sip.data.collate import collate_sip
from megatron_sip.data.preprocess import preprocess_jsonl
from tests.launch import REPO_ROOT
from tests.test_data_helpers import embedded_codec, run_samples

DATA = REPO_ROOT / "examples" / "data"


@pytest.fixture(scope="module")
def corpus() -> dict:
    return {split: [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()]
            for split in ("train", "heldout")}


def test_shipped_files_are_the_generator_output(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(DATA / "generate_corpus.py"), "--out-dir", str(tmp_path)],
                   check=True, capture_output=True, timeout=60)
    for name in ("train.jsonl", "heldout.jsonl", "facts.json", "lexicon.txt"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
    assert (DATA / "train.jsonl").stat().st_size < 5_000_000  # the repository stays small


def test_unsafe_share_and_lexicon_confinement(corpus) -> None:
    lexicon = [line for line in (DATA / "lexicon.txt").read_text().splitlines()
               if line and not line.startswith("#")]
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, lexicon)) + r")\b", re.IGNORECASE)
    for split, docs in corpus.items():
        unsafe = [d for d in docs if d["unsafe"]]
        assert 0.15 < len(unsafe) / len(docs) < 0.25, split
        kinds = {d["kind"] for d in unsafe}
        assert kinds == {"abuse_after_safe_prefix", "abusive_throughout"}
        for doc in docs:
            start = doc["abuse_start_char"]
            if doc["unsafe"]:
                assert pattern.search(doc["text"][start:])
                assert (start > 100) == (doc["kind"] == "abuse_after_safe_prefix")
            assert not pattern.search(doc["text"] if start is None else doc["text"][:start])


def test_facts_are_stated_in_train_and_checkable_on_heldout(corpus) -> None:
    facts = {f["id"]: f for f in json.loads((DATA / "facts.json").read_text())}
    stated = {fid for doc in corpus["train"] for fid in doc["facts"]}
    assert stated == set(facts)
    heldout = [d for d in corpus["heldout"] if d["facts"]]
    assert len(heldout) > 50
    for doc in heldout:
        for fid in doc["facts"]:
            value = facts[fid]["value"]
            rendered = f"{value:,}" if isinstance(value, int) and value >= 10000 else str(value)
            assert rendered in doc["text"], (fid, doc["id"])
    train_texts = {d["text"] for d in corpus["train"]}
    assert not train_texts & {d["text"] for d in corpus["heldout"]}


def test_heldout_through_preprocess_and_the_sampler(tmp_path: Path, corpus) -> None:
    codec = embedded_codec()
    prefix = str(tmp_path / "heldout")
    stats = preprocess_jsonl([str(DATA / "heldout.jsonl")], prefix, codec=codec)
    assert stats.num_docs == len(corpus["heldout"])
    cfg = load_config(REPO_ROOT / "examples" / "data" / "demo.yaml", [f"data.paths=[{prefix}]"])
    source = run_samples(cfg, eod_id=codec.eod_id, num_samples=64)
    assert source.num_skipped_docs == {prefix: 0}  # every demo document is long enough
    samples = [source[i] for i in range(64)]
    for s in samples[:16]:
        text = corpus["heldout"][s.doc_id]["text"]
        assert codec.decode(s.suffix) in text and codec.decode(s.prefix[-8:]) in text
    batch = collate_sip(samples[:4], pad_id=codec.eod_id)
    assert batch.suffix.tokens_BS.shape[1] <= cfg.model.seq_length
    unsafe_docs = sum(corpus["heldout"][s.doc_id]["unsafe"] for s in samples)
    assert 0 < unsafe_docs < 32
