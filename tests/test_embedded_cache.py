"""The embedded tokenizer's on-disk cache gives the same tokenizer as the GGUF it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_sip.embedded import embedded_gguf_path, load_embedded_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_cached_tokenizer_encodes_like_the_gguf_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    monkeypatch.setenv("MEGATRON_SIP_CACHE", str(tmp_path))
    first = load_embedded_tokenizer()  # converts from the GGUF and writes the cache
    cached_dirs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(cached_dirs) == 1 and not any("." in p.name.split("-")[-1] for p in cached_dirs)
    second = load_embedded_tokenizer()  # from the cache
    gguf = embedded_gguf_path()
    direct = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    lines = (REPO_ROOT / "examples" / "data" / "heldout.jsonl").read_text().splitlines()[:50]
    texts = [json.loads(line)["text"] for line in lines] + ["<|endoftext|> a  b\n\tc <|im_end|>"]
    for text in texts:
        expected = direct(text, add_special_tokens=False, split_special_tokens=True).input_ids
        assert first(text, add_special_tokens=False, split_special_tokens=True).input_ids == expected
        assert second(text, add_special_tokens=False, split_special_tokens=True).input_ids == expected
    assert second.chat_template == direct.chat_template and second.eos_token == direct.eos_token
