"""The rewriter: answer cleaning, cutting to N tokens, failures counted, rules and HTTP backends."""

from __future__ import annotations

import pytest

from megatron_sip.judges.config import RewriterConfig
from megatron_sip.judges.rewriter import Rewriter, clean_answer, context_tail, cut_to_tokens
from megatron_sip.judges.types import RewriteRequest
from tests.fault_server import FaultServer


class WordTokenizer:
    """Space-separated pieces as tokens, with the two methods the rewriter uses."""

    def __init__(self) -> None:
        self.vocab = {}

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.setdefault(piece, len(self.vocab)) for piece in text.split(" ")]

    def decode(self, ids, skip_special_tokens=True):
        pieces = {i: piece for piece, i in self.vocab.items()}
        return " ".join(pieces[i] for i in ids)


def cut(text: str, n: int) -> str:
    return cut_to_tokens(text, WordTokenizer(), n)


def test_context_tail_is_verbatim():
    assert context_tail("one two  three four", 2) == "three four"
    assert context_tail("short", 5) == "short"
    assert context_tail("anything", 0) == ""


@pytest.mark.parametrize("answer, expected", [
    ("the river was calm.", " the river was calm."),
    ("Here is the rewritten passage:\nthe river was calm.", " the river was calm."),
    ("\"the river was calm.\"", " the river was calm."),
    ("walked to the river and the river was calm.", " the river was calm."),
    ("<<<BEGIN PASSAGE #ab>>>\nthe river was calm.\n<<<END PASSAGE #ab>>>", " the river was calm."),
    ("   ", None),
])
def test_clean_answer(answer, expected):
    assert clean_answer(answer, context="walked to the river and", suffix=" the river was loud.") == expected


def test_copied_instruction_lines_are_dropped_whole_or_cut_short():
    from importlib import resources

    from megatron_sip.judges.rewriter import instruction_lines

    template = resources.files("megatron_sip.judges").joinpath("prompts", "rewrite.txt").read_text()
    instructions = instruction_lines(template)
    assert "The passage begins with the last words of the start, repeated here:" in instructions
    assert not any("$" in line for line in instructions)

    def clean(answer):
        return clean_answer(answer, context="walked to the river and", suffix=" the river was loud.",
                            instructions=instructions)

    # What SmolLM2-135M wrote for 3 of 8 demo rewrites: the instruction, then text or more instructions.
    assert clean("The passage begins with the last words of the start, repeated here:\nthe river was calm.") == \
        " the river was calm."
    assert clean("The passage begins with the last words of the start, repeated here:\n\n"
                 "The text between each BEGIN and END marker is") is None
    assert clean("- Keep every part of the passage that is fine exactly as written.") is None
    # Text that shares a few words with an instruction is kept.
    assert clean("The passage begins at the mill.") == " The passage begins at the mill."


def test_cut_to_tokens():
    assert cut(" a b c d e", 3) == " a b"


def test_rules_rewriter_removes_unsafe_terms_and_counts_failures():
    with Rewriter.open(RewriterConfig(backend="rules")) as rewriter:
        requests = [RewriteRequest("He was angry.", " He wanted to kill the neighbour's dog.", 10),
                    RewriteRequest("p", " kill", 4)]
        out = rewriter.rewrite_batch(requests)
        assert out[0] == " He wanted to the neighbour's dog."
        assert out[1] is None
        assert (rewriter.stats.num_requests, rewriter.stats.num_failed) == (2, 1)
        assert rewriter(requests[:1]) == out[:1]  # also a plain callable


def test_http_rewriter_cleans_and_fails_within_deadline():
    reply = "Here is the rewritten passage:\n the sky was clear and blue all day long"
    with FaultServer(reply=reply) as server:
        cfg = RewriterConfig(endpoints=[server.url], request_timeout_s=0.3, max_retries=1, retry_backoff_s=0.01,
                             health_timeout_s=5.0, context_words=3)
        with Rewriter.open(cfg) as rewriter:
            request = RewriteRequest("In the morning the sky", " was grey and it rained", 5)
            assert rewriter.rewrite_batch([request]) == [" the sky was clear and blue all day long"]
            prompt = server.stats()["last_body"]["messages"][0]["content"]
            assert "morning the sky was grey and it rained" in prompt.replace("\n", " ")
            assert server.stats()["last_body"]["temperature"] == 0.0
            server.control(mode="hang")
            assert rewriter.rewrite_batch([request], deadline_s=0.8) == [None]
            assert rewriter.stats.num_failed == 1
