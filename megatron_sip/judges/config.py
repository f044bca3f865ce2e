"""`judge` and `rewriter` sections: which post-trained models score and rewrite, and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from megatron_sip.errors import ConfigError, check_choice, check_positive

BACKENDS = ("openai", "embedded", "rules")
CRITERIA = ("quality", "safety", "factuality")
SCHEDULES = ("round_robin", "pivot", "knockout")
PAIR_ORDERS = ("both", "random")


@dataclass
class EndpointConfig:
    """How to reach OpenAI-compatible servers (trtllm-serve, vllm serve, megatron-sip serve)."""

    endpoints: List[str] = field(default_factory=list)
    """Base URLs, e.g. [http://judge-0:8000,http://judge-1:8000]; requests are balanced over them."""
    model: Optional[str] = None
    """Model name sent in requests; null = the first id of the server's /v1/models."""
    api_key_env: Optional[str] = None
    """Environment variable holding the API key (never logged)."""
    api_key_file: Optional[str] = None
    """File holding the API key, if not from the environment."""
    max_concurrency_per_endpoint: int = 32
    """Requests in flight per endpoint."""
    request_timeout_s: float = 60.0
    """Timeout of one HTTP request."""
    max_retries: int = 3
    """Retries of a failed request (backoff with jitter)."""
    health_timeout_s: float = 300.0
    """How long to wait at start for at least one endpoint's /health."""


@dataclass
class JudgeConfig(EndpointConfig):
    backend: str = "openai"
    """openai (HTTP servers), embedded (the SmolLM2 model in-process) or rules (programmatic, for
    controlled experiments)."""
    criteria: List[str] = field(default_factory=lambda: ["quality"])
    """Criteria to score: quality (pairwise), safety (pointwise), factuality (pointwise + reference)."""
    weights: Dict[str, float] = field(default_factory=dict)
    """Reward weight per criterion; a missing criterion weighs 1.0."""
    samples: int = 1
    """Votes per judgment."""
    temperature: float = 1.0
    """Sampling temperature of the judge."""
    top_p: float = 0.6
    """Nucleus of the judge's sampling."""
    max_tokens: int = 256
    """Longest judge answer in tokens."""
    schedule: str = "round_robin"
    """Pairs judged for quality: round_robin (all pairs), pivot (each vs the suffix), knockout."""
    pair_order: str = "both"
    """Pairwise judgments in both orders, or one random order per call."""
    batch_deadline_s: float = 600.0
    """Overall deadline of one batch of judgments; unanswered items are marked failed."""
    prompt_dir: Optional[str] = None
    """Directory with prompt templates overriding the packaged ones (file names as packaged)."""

    def __post_init__(self) -> None:
        check_choice("judge", self, "backend", BACKENDS)
        check_choice("judge", self, "schedule", SCHEDULES)
        check_choice("judge", self, "pair_order", PAIR_ORDERS)
        check_positive("judge", self, "samples", "max_tokens", "batch_deadline_s",
                       "max_concurrency_per_endpoint", "request_timeout_s")
        for name in self.criteria:
            if name not in CRITERIA:
                raise ConfigError("judge.criteria", f"'{name}' is not one of {', '.join(CRITERIA)}")
        for name in self.weights:
            if name not in self.criteria:
                raise ConfigError(f"judge.weights.{name}", "weights a criterion not in judge.criteria")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("judge.top_p", f"{self.top_p} is not in (0, 1]")


@dataclass
class RewriterConfig(EndpointConfig):
    backend: str = "openai"
    """openai (HTTP servers) or embedded (the SmolLM2 model in-process)."""
    temperature: float = 0.0
    """Sampling temperature of the rewriter (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus of the rewriter's sampling."""
    context_words: int = 8
    """Last words of the prefix shown before the suffix to rewrite."""

    def __post_init__(self) -> None:
        check_choice("rewriter", self, "backend", ("openai", "embedded"))
        check_positive("rewriter", self, "request_timeout_s", "max_concurrency_per_endpoint")
