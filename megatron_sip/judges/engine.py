"""Judgments from a generative judge model: render each `Ask`, send it with `n = judge.samples`,
and turn every sampled answer into a vote (or nothing, when it holds no valid decision).

A `JudgeEngine` is what the orchestrator (`judge.py`) talks to; `ModelEngine` backs it with any
`TextGenerator` (HTTP servers or the in-process model), `RulesEngine` (backends/rules.py) with
programmatic signals.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

from megatron_sip.judges.config import JudgeConfig
from megatron_sip.judges.criteria import CRITERIA, Ask, PromptSet
from megatron_sip.judges.generation import Generation, GenerationRequest, TextGenerator
from megatron_sip.judges.parsing import direct_vote, parse_label, soft_vote

logger = logging.getLogger(__name__)

Votes = Tuple[float, ...]
"""Valid votes of one judgment in [0, 1] (pairwise: for the first text shown); () = failed."""


class JudgeEngine(Protocol):
    async def ask(self, asks: Sequence[Ask], *, deadline_s: float) -> List[Votes]:
        """One Votes per ask, within `deadline_s` seconds."""

    def counters(self) -> Dict[str, int]:
        """Events since the engine opened (cumulative), e.g. votes_cut_off."""

    def fingerprint(self) -> str:
        """What makes this judge's votes what they are (model, prompts, sampling); stored judgments
        with another fingerprint are not this judge's and are not reused."""

    async def aclose(self) -> None:
        """Release what the engine holds."""


def digest(*parts: object) -> str:
    """A short stable hash of `parts` (their JSON), for fingerprints."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


class ModelEngine:
    def __init__(self, generator: TextGenerator, cfg: JudgeConfig, prompts: PromptSet) -> None:
        self._generator = generator
        self._cfg = cfg
        self._prompts = prompts
        self._counters: "collections.Counter[str]" = collections.Counter()

    def counters(self) -> Dict[str, int]:
        """votes_cut_off (answers that hit max_tokens before a decision: for a reasoning judge,
        reasoning cut off), votes_without_decision (other answers with no valid decision), and the
        transport's own counters (judges/client.py) where it keeps any."""
        merged = collections.Counter(self._counters)
        merged.update(getattr(self._generator, "counters", {}))
        return dict(merged)

    async def ask(self, asks: Sequence[Ask], *, deadline_s: float) -> List[Votes]:
        rendered = [self._prompts.render(a) for a in asks]
        self._count_shared_prefix([r.prompt for r in rendered])
        requests = [self._request(r.prompt) for r in rendered]
        generations = await self._generator.generate(requests, deadline_s=deadline_s)
        return [self._votes(a, r.nonce, g) for a, r, g in zip(asks, rendered, generations)]

    def fingerprint(self) -> str:
        cfg = self._cfg
        model = getattr(self._generator, "model", None)
        served = model if isinstance(model, str) else cfg.model or cfg.local_model
        return digest("model", cfg.backend, served, cfg.api, cfg.decision, cfg.samples, cfg.temperature, cfg.top_p,
                      cfg.max_tokens, cfg.logprobs, cfg.top_logprobs, cfg.pair_order, cfg.request_seed,
                      self._prompts.text())

    def _count_shared_prefix(self, prompts: Sequence[str]) -> None:
        """prompt_chars_shared / prompt_chars: the share of the characters of the prompts of one
        call (one group, one criterion) that each prompt shares, from its start, with another
        prompt of the call. That is what a server's prefix cache (trtllm-serve's KV block reuse,
        vLLM's automatic prefix caching) can reuse: both match the longest cached prefix."""
        self._counters["prompt_chars"] += sum(len(p) for p in prompts)
        self._counters["prompt_chars_shared"] += sum(shared_prefix_lengths(prompts))

    def _request(self, prompt: str) -> GenerationRequest:
        cfg = self._cfg
        if cfg.decision == "direct":
            # One greedy token: the vote comes from its log-probs, which sampling would not change.
            return GenerationRequest(prompt=prompt, n=1, temperature=0.0, top_p=1.0, max_tokens=1,
                                     top_logprobs=cfg.top_logprobs)
        return GenerationRequest(prompt=prompt, n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p,
                                 max_tokens=cfg.max_tokens, top_logprobs=cfg.top_logprobs if cfg.logprobs else 0)

    def _votes(self, ask: Ask, nonce: str, generation: Optional[Generation]) -> Votes:
        if generation is None:
            return ()
        labels = CRITERIA[ask.criterion].labels
        if self._cfg.decision == "direct":
            votes = [direct_vote(c, labels, soft=self._cfg.logprobs) for c in generation.choices]
            self._counters["votes_without_decision"] += sum(v is None for v in votes)
            return tuple(v for v in votes if v is not None)
        votes = []
        for choice in generation.choices:
            label = parse_label(choice.text, labels, nonce)
            if label is None:
                self._counters["votes_cut_off" if choice.cut_off else "votes_without_decision"] += 1
                logger.debug("%s: no valid decision (finish_reason %s) in %r", ask.criterion,
                             choice.finish_reason, choice.text[-200:])
                continue
            votes.append(soft_vote(label, labels, choice.logprobs) if self._cfg.logprobs else labels[label])
        return tuple(votes)

    async def aclose(self) -> None:
        await self._generator.aclose()


def shared_prefix_lengths(prompts: Sequence[str]) -> List[int]:
    """For each prompt, the length of its longest common prefix with any other prompt. In sorted
    order a string's longest common prefix with the others is the one with a neighbour."""
    order = sorted(range(len(prompts)), key=prompts.__getitem__)
    shared = [0] * len(prompts)
    for before, after in zip(order, order[1:]):
        common = len(os.path.commonprefix([prompts[before], prompts[after]]))
        shared[before] = max(shared[before], common)
        shared[after] = max(shared[after], common)
    return shared
