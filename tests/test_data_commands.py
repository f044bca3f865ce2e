"""`megatron-sip sample` and `megatron-sip rewrite` end to end (in-process, tokenizer loaded once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import yaml

import megatron_sip.commands.rewrite as rewrite_command
from megatron_sip import cli
from megatron_sip.data.rewrite_store import RewriteStoreReader
from megatron_sip.errors import EXIT_PARTIAL
from tests.launch import REPO_ROOT
from tests.test_data_helpers import embedded_codec, write_docs


@pytest.fixture
def codec(monkeypatch):
    codec = embedded_codec()
    monkeypatch.setattr("megatron_sip.data.codec.load_codec", lambda *a, **k: codec)
    return codec


@pytest.fixture
def run_yaml(tmp_path: Path, codec) -> Path:
    sentences = ["The mill by the river turned all day.", "Farmers brought grain from the hills.",
                 "In winter the water froze and the wheel stood still.", "Children skated on the ice."]
    rng = np.random.default_rng(0)
    docs = [np.array(codec.encode(" ".join(rng.choice(sentences, size=6)))) for _ in range(24)]
    prefix = write_docs(tmp_path / "mill", docs)
    config = {"defaults": [str(REPO_ROOT / "examples" / "tiny_cpu.yaml")],
              "data": {"paths": [prefix], "min_prefix_len": 4, "max_prefix_len": 48},
              "sip": {"suffix_len": 12}, "train": {"micro_batch_size": 2, "global_batch_size": 4}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _sample(capsys, *args: str) -> List[dict]:
    assert cli.main(["sample", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_sample_prints_what_each_rank_reads(run_yaml: Path, capsys, codec) -> None:
    records = _sample(capsys, "--config", str(run_yaml), "--count", "8")
    assert len(records) == 8 and [r["index"] for r in records] == list(range(8))
    first = records[0]
    assert set(first) >= {"doc_id", "split", "prefix_len", "suffix_len", "prefix_tail_text",
                          "suffix_text", "rewrite_text"}
    assert all(r["suffix_len"] == 12 and 4 <= r["prefix_len"] <= 48 for r in records)
    assert first["rewrite_text"] is None and first["suffix_text"]
    rank0 = _sample(capsys, "--config", str(run_yaml), "--count", "4", "--dp-rank", "0", "--dp-size", "2")
    rank1 = _sample(capsys, "--config", str(run_yaml), "--count", "4", "--dp-rank", "1", "--dp-size", "2")
    assert [r["index"] for r in rank0] == [0, 1, 4, 5] and [r["index"] for r in rank1] == [2, 3, 6, 7]
    by_index = {r["index"]: r for r in records}
    assert all(r == by_index[r["index"]] for r in rank0 + rank1)
    tail = _sample(capsys, "--config", str(run_yaml), "--count", "4", "--start", "4")
    assert tail == records[4:]
    overridden = _sample(capsys, "--config", str(run_yaml), "--count", "2", "sip.suffix_len=6")
    assert all(r["suffix_len"] == 6 for r in overridden)


def test_sample_errors_are_one_line(run_yaml: Path, capsys, codec, tmp_path: Path) -> None:
    assert cli.main(["sample", "--config", str(run_yaml), "--count", "2", "sip.suffix_len=100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sip.suffix_len" in err[0]
    code = cli.main(["sample", "--config", str(run_yaml), "--count", "2",
                     f"data.paths=[{tmp_path / 'nothing'}]"])
    assert code == 2 and "data.paths" in capsys.readouterr().err


def test_rewrite_without_a_rewriter_client_says_so(run_yaml: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(rewrite_command, "REWRITER_MODULE", "megatron_sip.judges.no_such_rewriter")
    assert cli.main(["rewrite", "--config", str(run_yaml), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no rewriter client" in err[0]


def test_failed_rewrites_give_their_own_exit_status_and_are_retried(run_yaml: Path, capsys, monkeypatch) -> None:
    import contextlib

    calls = []

    @contextlib.contextmanager
    def flaky_rewriter(cfg, codec):  # fault injection: the first call fails every other request
        def rewrite(requests):
            calls.append(len(requests))
            return [None if len(calls) == 1 and k % 2 else r.suffix_text for k, r in enumerate(requests)]
        yield rewrite

    monkeypatch.setattr(rewrite_command, "open_rewrite_fn", flaky_rewriter)
    args = ["rewrite", "--config", str(run_yaml), "--count", "6", "--batch-size", "6", "--no-progress"]
    assert cli.main(args) == EXIT_PARTIAL == 3
    assert "3 failed" in capsys.readouterr().err
    assert cli.main(args) == 0  # the rerun asks only for the three that failed
    assert calls[1:] == [3] and "3 rewrites written, 3 already stored, 0 failed" in capsys.readouterr().err


def test_rewrite_command_with_the_rules_rewriter(run_yaml: Path, capsys, codec) -> None:
    """The real client (`rewriter.backend=rules`: the suffix without lexicon terms) end to end."""
    args = ["rewrite", "--config", str(run_yaml), "--count", "10", "--batch-size", "3",
            "--shard-size", "4", "--no-progress", "rewriter.backend=rules"]
    assert cli.main(args) == 0
    assert "10 samples" in capsys.readouterr().err
    prefix = yaml.safe_load(run_yaml.read_text())["data"]["paths"][0]
    reader = RewriteStoreReader.open(Path(prefix + ".rewrites"))
    assert reader.num_entries == len({tuple(k) for k in reader.keys.tolist()}) > 0
    records = _sample(capsys, "--config", str(run_yaml), "--count", "10")
    for record in records:  # the mill corpus has no lexicon term: the rewrite is the suffix
        assert record["rewrite_text"] is not None
        assert record["rewrite_text"].strip() == record["suffix_text"].strip()
    assert cli.main(args) == 0  # a rerun finds everything stored
    assert "0 rewrites written, 10 already stored" in capsys.readouterr().err


def test_measure_rewrites_reads_back_what_the_run_trains_on(run_yaml: Path, capsys) -> None:
    from megatron_sip.config import load_config
    from megatron_sip.evaluate.rewrites import measure_rewrites

    args = ["rewrite", "--config", str(run_yaml), "--count", "6", "--no-progress", "rewriter.backend=rules"]
    assert cli.main(args) == 0
    cfg = load_config(str(run_yaml), ["rewriter.backend=rules"])
    seen = []

    def every_other_unsafe(texts):  # an injected instrument: calls every other text unsafe
        seen.extend(texts)
        return [float(k % 2) for k in range(len(texts))]

    measured = measure_rewrites(cfg, num_samples=8, scorers={"odd": every_other_unsafe})
    assert measured["num_samples"] == 8 and measured["num_without_rewrite"] == 2  # only 6 were rewritten
    assert measured["num_unchanged"] == 6  # no lexicon term in this corpus: the rules rewrite is the suffix
    safe = measured["safe"]["odd"]
    assert safe["suffix"]["n"] == safe["rewrite"]["n"] == 6 and safe["suffix"]["value"] == pytest.approx(0.5)
    assert safe["rewrite_where_suffix_unsafe"]["n"] == 3 and len(seen) == 12
    assert measured["mean_suffix_tokens"] == measured["mean_rewrite_tokens"]
    assert len(measured["examples"]) == 3
