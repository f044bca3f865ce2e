"""`megatron-sip preprocess`: JSONL -> .bin/.idx round trip, bad lines named by file and line,
and interrupted runs that leave nothing complete-looking behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

import megatron_sip.data.preprocess as preprocess_module
from megatron_sip import cli
from megatron_sip.data.indexed import indexed_dataset_exists
from megatron_sip.data.preprocess import preprocess_jsonl
from megatron_sip.errors import InputError
from tests.test_data_helpers import embedded_codec, write_jsonl

TEXTS = ["The river Aldo flows north.", "Zürich, naïve café — ünïcödé ✓ 日本語",
         "Line one.\nLine two.\tTabbed.", "", "A page quoting <|endoftext|> and <|im_end|> literally."]


@pytest.fixture(scope="module")
def codec():
    return embedded_codec()


def test_round_trip_equals_the_tokenizer(tmp_path: Path, codec) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", [{"text": t, "id": i} for i, t in enumerate(TEXTS[:3])])
    second = write_jsonl(tmp_path / "b.jsonl", [{"text": t} for t in TEXTS[3:]])
    prefix = str(tmp_path / "out")
    stats = preprocess_jsonl([str(first), str(second)], prefix, codec=codec)
    assert stats.num_docs == len(TEXTS) and stats.num_bad_lines == 0
    dataset = IndexedDataset(prefix)  # Megatron-Core's own reader
    assert dataset.index.dtype == np.uint16
    assert codec.eod_id == 0 and codec.eod_token == "<|endoftext|>"
    for i, text in enumerate(TEXTS):
        tokens = dataset[i].tolist()
        assert tokens == codec.encode(text) + [0]
        assert codec.decode(tokens[:-1]) == text
    plain = codec.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert dataset[0].tolist()[:-1] == list(plain)
    # Special-token strings in the text stay text: the only EOD is the appended one.
    assert dataset[4].tolist().count(0) == 1 and 2 not in dataset[4].tolist()
    assert stats.num_tokens == sum(len(dataset[i]) for i in range(len(TEXTS)))


@pytest.mark.parametrize("line, fragment", [
    (b'{"text": "ok"', "invalid JSON"),
    (b'{"body": "no text key"}', "no key 'text' (keys: body"),
    (b'{"text": 42}', "holds a number, not text"),
    (b'{"text": null}', "holds a null, not text"),
    (b'["text"]', "a JSON list, not an object"),
    (b'{"text": "caf\xe9"}', "not UTF-8 (byte 0xe9"),
])
def test_a_bad_line_is_named_by_file_and_line(tmp_path: Path, codec, line: bytes, fragment: str) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "fine"}, b"", line, {"text": "fine too"}])
    prefix = str(tmp_path / "out")
    with pytest.raises(InputError) as info:
        preprocess_jsonl([str(path)], prefix, codec=codec)
    assert str(info.value).startswith(f"{path}:3: ") and fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == [path]  # no output, not even partial files
    stats = preprocess_jsonl([str(path)], prefix, codec=codec, skip_bad_lines=True)
    assert (stats.num_docs, stats.num_bad_lines) == (2, 1)
    assert stats.first_bad_line.startswith(f"{path}:3: ")


def test_other_json_key(tmp_path: Path, codec) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"body": "Hello there."}])
    preprocess_jsonl([str(path)], str(tmp_path / "out"), codec=codec, json_key="body")
    dataset = IndexedDataset(str(tmp_path / "out"))
    assert dataset[0].tolist() == codec.encode("Hello there.") + [0]


def test_missing_empty_and_all_bad_inputs(tmp_path: Path, codec) -> None:
    with pytest.raises(InputError, match=r"nope\.jsonl: no such file"):
        preprocess_jsonl([str(tmp_path / "nope.jsonl")], str(tmp_path / "out"), codec=codec)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.jsonl: empty file"):
        preprocess_jsonl([str(tmp_path / "empty.jsonl")], str(tmp_path / "out"), codec=codec)
    (tmp_path / "blank.jsonl").write_bytes(b"\n  \n")
    with pytest.raises(InputError, match=r"blank\.jsonl: empty file \(only blank lines\)"):
        preprocess_jsonl([str(tmp_path / "blank.jsonl")], str(tmp_path / "out"), codec=codec)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"x": 1}, {"x": 2}])
    with pytest.raises(InputError, match="no document"):
        preprocess_jsonl([str(bad)], str(tmp_path / "out"), codec=codec, skip_bad_lines=True)
    assert not indexed_dataset_exists(str(tmp_path / "out"))


def test_interrupted_run_leaves_nothing_and_a_rerun_completes(tmp_path: Path, codec,
                                                              monkeypatch) -> None:
    monkeypatch.setattr(preprocess_module, "CHUNK_LINES", 4)
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": f"Document number {i}."} for i in range(20)])
    prefix = str(tmp_path / "out")
    seen = []

    def interrupt(num_docs: int) -> None:
        seen.append(num_docs)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        preprocess_jsonl([str(path)], prefix, codec=codec, on_progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    # A killed process leaves .partial files; they never pass for a dataset and are replaced.
    Path(prefix + ".bin.partial").write_bytes(b"junk")
    assert not indexed_dataset_exists(prefix)
    stats = preprocess_jsonl([str(path)], prefix, codec=codec)
    assert stats.num_docs == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.bin", "out.idx"]
    dataset = IndexedDataset(prefix)
    assert dataset[19].tolist() == codec.encode("Document number 19.") + [0]


@pytest.mark.slow
def test_workers_write_identical_files(tmp_path: Path, codec) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": f"Doc {i}: " + "word " * (i % 13)}
                                               for i in range(600)])
    preprocess_jsonl([str(path)], str(tmp_path / "one"), codec=codec)
    preprocess_jsonl([str(path)], str(tmp_path / "two"), codec=codec, num_workers=2,
                     tokenizer_spec="embedded")
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"one{suffix}").read_bytes() == (tmp_path / f"two{suffix}").read_bytes()


def test_cli_errors_are_one_line_with_exit_2(tmp_path: Path, capsys, monkeypatch, codec) -> None:
    code = cli.main(["preprocess", "--input", str(tmp_path / "missing.jsonl"),
                     "--output-prefix", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "missing.jsonl: no such file" in err[0]
    monkeypatch.setattr("megatron_sip.data.codec.load_codec", lambda *a, **k: codec)
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, {"text": 1}])
    code = cli.main(["preprocess", "--input", str(path), "--output-prefix", str(tmp_path / "out"),
                     "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith("in.jsonl:2: 'text' holds a number, not text "
                                          "(--skip-bad-lines skips such lines)")
    code = cli.main(["preprocess", "--input", f"{path},{path}", "--output-prefix",
                     str(tmp_path / "out"), "--skip-bad-lines", "--no-progress"])
    assert code == 0 and "2 documents" in capsys.readouterr().err
