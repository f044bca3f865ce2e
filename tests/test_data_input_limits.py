"""Inputs that must not crash or silently win: a huge JSONL line, deeply nested JSON, an existing
dataset under the output prefix, token ids beyond the model's vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megatron_sip import cli
from megatron_sip.data.indexed import max_token_id
from megatron_sip.data.preprocess import preprocess_jsonl
from megatron_sip.errors import ConfigError, InputError
from tests.test_data_helpers import embedded_codec, EOD, random_docs, run_config, run_samples, VOCAB, write_docs, write_jsonl


@pytest.fixture(scope="module")
def codec():
    return embedded_codec()


def test_a_line_over_the_limit_is_a_bad_line_and_the_next_line_still_counts(tmp_path: Path, codec) -> None:
    huge = json.dumps({"text": "word " * 4000}).encode()
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "first"}, huge, {"text": "after"}])
    prefix = str(tmp_path / "out")
    with pytest.raises(InputError, match=rf"^{path}:2: longer than 1024 bytes \(see --max-line-bytes\)"):
        preprocess_jsonl([str(path)], prefix, codec=codec, max_line_bytes=1024)
    stats = preprocess_jsonl([str(path)], prefix, codec=codec, max_line_bytes=1024, skip_bad_lines=True)
    assert (stats.num_docs, stats.num_bad_lines) == (2, 1)
    exact = json.dumps({"text": "x" * 100}).encode()  # a line of exactly the limit is fine
    path2 = write_jsonl(tmp_path / "exact.jsonl", [exact])
    assert preprocess_jsonl([str(path2)], str(tmp_path / "exact"), codec=codec, max_line_bytes=len(exact)).num_docs == 1


def test_deeply_nested_json_is_a_bad_line(tmp_path: Path, codec) -> None:
    deep = b'{"text": "ok", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "fine"}, deep])
    with pytest.raises(InputError, match=rf"^{path}:2: JSON nested too deeply"):
        preprocess_jsonl([str(path)], str(tmp_path / "out"), codec=codec)
    stats = preprocess_jsonl([str(path)], str(tmp_path / "out"), codec=codec, skip_bad_lines=True)
    assert (stats.num_docs, stats.num_bad_lines) == (1, 1)


def test_preprocess_refuses_to_overwrite_without_force(tmp_path: Path, capsys, monkeypatch, codec) -> None:
    monkeypatch.setattr("megatron_sip.data.codec.load_codec", lambda *a, **k: codec)
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "one document"}])
    prefix = str(tmp_path / "out")
    args = ["preprocess", "--input", str(path), "--output-prefix", prefix, "--no-progress"]
    assert cli.main(args) == 0
    before = Path(prefix + ".bin").read_bytes()
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == (f"megatron-sip preprocess: error: {prefix}.bin and {prefix}.idx: a dataset "
                                        "exists there; pass --force to overwrite it (its rewrite store would then "
                                        "be refused as stale)")
    write_jsonl(path, [{"text": "another document entirely"}])
    assert cli.main([*args, "--force"]) == 0
    assert Path(prefix + ".bin").read_bytes() != before


def test_token_ids_beyond_the_vocabulary_name_the_dataset(tmp_path: Path) -> None:
    good = write_docs(tmp_path / "good", random_docs(20, min_len=40, max_len=60))
    bad_docs = random_docs(20, min_len=40, max_len=60)
    bad_docs[7][3] = VOCAB + 5
    bad = write_docs(tmp_path / "bad", bad_docs)
    run_samples(run_config([good]), eod_id=EOD, num_samples=8)
    with pytest.raises(ConfigError, match=rf"^data\.paths: '{bad}' holds token id {VOCAB + 5}, beyond the "
                                          rf"model's vocabulary \(model\.vocab_size={VOCAB}\)"):
        run_samples(run_config([good, bad]), eod_id=EOD, num_samples=8)
    # Scanned once: the result is remembered beside the dataset, keyed by the files' size and mtime.
    record = json.loads(Path(bad + ".max_token_id.json").read_text())
    assert record["max_token_id"] == max_token_id(bad) == VOCAB + 5
    assert int(np.max(np.concatenate(bad_docs))) == VOCAB + 5
