"""Judgments from a generative judge model: render each `Ask`, send it with `n = judge.samples`,
and turn every sampled answer into a vote (or nothing, when it holds no valid decision).

A `JudgeEngine` is what the orchestrator (`judge.py`) talks to; `ModelEngine` backs it with any
`TextGenerator` (HTTP servers or the in-process model), `RulesEngine` (backends/rules.py) with
programmatic signals.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Protocol, Sequence, Tuple

from megatron_sip.judges.config import JudgeConfig
from megatron_sip.judges.criteria import CRITERIA, Ask, PromptSet
from megatron_sip.judges.generation import Generation, GenerationRequest, TextGenerator
from megatron_sip.judges.parsing import parse_label, soft_vote

logger = logging.getLogger(__name__)

Votes = Tuple[float, ...]
"""Valid votes of one judgment in [0, 1] (pairwise: for the first text shown); () = failed."""


class JudgeEngine(Protocol):
    async def ask(self, asks: Sequence[Ask], *, deadline_s: float) -> List[Votes]:
        """One Votes per ask, within `deadline_s` seconds."""

    async def aclose(self) -> None:
        """Release what the engine holds."""


class ModelEngine:
    def __init__(self, generator: TextGenerator, cfg: JudgeConfig, prompts: PromptSet) -> None:
        self._generator = generator
        self._cfg = cfg
        self._prompts = prompts

    async def ask(self, asks: Sequence[Ask], *, deadline_s: float) -> List[Votes]:
        rendered = [self._prompts.render(a) for a in asks]
        requests = [GenerationRequest(prompt=r.prompt, n=self._cfg.samples, temperature=self._cfg.temperature,
                                      top_p=self._cfg.top_p, max_tokens=self._cfg.max_tokens,
                                      top_logprobs=self._cfg.top_logprobs if self._cfg.logprobs else 0)
                    for r in rendered]
        generations = await self._generator.generate(requests, deadline_s=deadline_s)
        return [self._votes(a, r.foreign, g) for a, r, g in zip(asks, rendered, generations)]

    def _votes(self, ask: Ask, foreign: frozenset, generation: Optional[Generation]) -> Votes:
        if generation is None:
            return ()
        labels = CRITERIA[ask.criterion].labels
        votes = []
        for choice in generation.choices:
            label = parse_label(choice.text, labels, set(foreign))
            if label is None:
                logger.debug("%s: no valid decision in %r", ask.criterion, choice.text[-200:])
                continue
            votes.append(soft_vote(label, labels, choice.logprobs) if self._cfg.logprobs else labels[label])
        return tuple(votes)

    async def aclose(self) -> None:
        await self._generator.aclose()
