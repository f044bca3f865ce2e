"""The text-generation wire types shared by the judges (their HTTP client and in-process backend)
and `megatron-sip serve`: what is asked of a model and what comes back. Both sides import them
from here, so neither imports the other for them.

A `TextGenerator` turns a batch of `GenerationRequest`s into one `Generation` or `None` (failed)
per request, and never takes longer than the deadline it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Protocol, Sequence, Tuple


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    """The user message (chat api) or the raw prompt (completions api)."""
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: Optional[int] = None
    stop: Tuple[str, ...] = ()
    top_logprobs: int = 0
    """Alternatives per generated token to return; 0 = no logprobs requested."""


@dataclass(frozen=True)
class TokenLogprobs:
    token: str
    logprob: float
    top: Mapping[str, float] = field(default_factory=dict)
    """Alternative tokens at this position -> their log-probability."""


@dataclass(frozen=True)
class Choice:
    text: str
    """The answer (`content` on the chat api; empty when the server sent null)."""
    finish_reason: Optional[str] = None
    logprobs: Optional[Tuple[TokenLogprobs, ...]] = None
    """Per generated token, when the server returned them."""
    reasoning: Optional[str] = None
    """A reasoning model's analysis, when the server returns it apart from the answer
    (`reasoning_content` or `reasoning` of the message)."""

    @property
    def cut_off(self) -> bool:
        """The generation hit `max_tokens` (for a reasoning judge: usually before its answer)."""
        return self.finish_reason == "length"


@dataclass(frozen=True)
class Generation:
    choices: Tuple[Choice, ...]

    @property
    def texts(self) -> List[str]:
        return [c.text for c in self.choices]


class TextGenerator(Protocol):
    async def generate(self, requests: Sequence[GenerationRequest], *,
                       deadline_s: float) -> List[Optional[Generation]]:
        """One result per request, None where it failed; returns within `deadline_s` seconds."""

    async def aclose(self) -> None:
        """Release connections, threads and models."""
