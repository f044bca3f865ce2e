"""The in-process `embedded` backend: the same SmolLM2 without HTTP, shared by judge and rewriter."""

from __future__ import annotations

import pytest

from megatron_sip.embedded import EmbeddedModelMissing, embedded_gguf_path
from megatron_sip.judges.config import JudgeConfig, RewriterConfig
from megatron_sip.judges.rewriter import Rewriter
from megatron_sip.judges.service import JudgeService
from megatron_sip.judges.types import Candidate, JudgeGroup, RewriteRequest

pytestmark = pytest.mark.slow


def test_embedded_judge_and_rewriter_in_process():
    try:
        embedded_gguf_path()
    except EmbeddedModelMissing as exc:
        pytest.skip(str(exc))
    # Asked for the label alone (read from the first token's log-probs), SmolLM2 decides every
    # judgment: a failed one would leave a None score and fail here.
    cfg = JudgeConfig(backend="embedded", criteria=["quality"], decision="direct", logprobs=True, top_logprobs=20,
                      batch_deadline_s=300)
    group = JudgeGroup("Water boils at", (Candidate(" 100 degrees Celsius.", "suffix"), Candidate(" the moon.")))
    with JudgeService.open(cfg) as judge:
        [result] = judge.judge([group])
    assert result.num_calls == 2 and len(result.rewards) == 2 and result.num_failed_judgments == 0
    assert all(v is not None and 0.0 <= v <= 1.0 for v in result.scores["quality"])
    with Rewriter.open(RewriterConfig(backend="embedded", max_tokens_extra=2)) as rewriter:
        [rewrite] = rewriter.rewrite_batch([RewriteRequest("Water boils at", " 50 degrees.", 4)])
    # SmolLM2 often answers a 4-token rewrite with nothing usable: that must come back as a
    # counted failure (None), never as an empty string.
    assert rewriter.stats.num_requests == 1
    assert (rewrite is None and rewriter.stats.num_failed == 1) or (
        isinstance(rewrite, str) and rewrite.strip() and rewriter.stats.num_failed == 0)


def test_embedded_direct_judge_always_decides_and_is_reproducible():
    """SmolLM2-135M rarely writes a reasoned decision line; asked for the label alone, every
    judgment gets a vote from its first token, and the same group scores the same twice."""
    try:
        embedded_gguf_path()
    except EmbeddedModelMissing as exc:
        pytest.skip(str(exc))
    cfg = JudgeConfig(backend="embedded", decision="direct", logprobs=True, top_logprobs=20,
                      criteria=["quality", "safety", "factuality"], batch_deadline_s=300)
    group = JudgeGroup("Water boils at", (Candidate(" 100 degrees Celsius at sea level.", "suffix"),
                                          Candidate(" the moon, said the cat.")), reference=" 100 degrees.")
    with JudgeService.open(cfg) as judge:
        first, again = judge.judge([group, group])
    assert first.num_calls == 2 + 2 + 2 and first.num_failed_judgments == 0
    assert all(0.0 <= v <= 1.0 for values in first.scores.values() for v in values)
    assert first.scores == again.scores
