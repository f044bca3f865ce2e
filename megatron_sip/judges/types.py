"""What callers hand the judge and the rewriter, and what they get back (frozen dataclasses).

Candidate indices are positions in `JudgeGroup.candidates`. A pairwise outcome `(i, j) -> v` is
the share of valid votes that preferred candidate i over candidate j (1 = i won every vote,
0.5 = split or tie); `(j, i)` is then `1 - v`. `None` always means "no valid answer came back":
it is never counted as a win, a loss or a score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

from megatron_sip.errors import InputError

CANDIDATE_KINDS = ("suffix", "rewrite", "rollout")


@dataclass(frozen=True)
class Candidate:
    text: str
    kind: str = "rollout"
    """suffix (the corpus continuation), rewrite, or rollout (a policy sample)."""

    def __post_init__(self) -> None:
        if self.kind not in CANDIDATE_KINDS:
            raise InputError(f"candidate kind '{self.kind}' is not one of {', '.join(CANDIDATE_KINDS)}")
        if not isinstance(self.text, str):
            raise InputError(f"candidate text must be a string, got {type(self.text).__name__}")


@dataclass(frozen=True)
class JudgeGroup:
    """One prefix and its candidate continuations, plus judgments already known (e.g. the
    policy-free ones from the rewrite store) so that only the missing ones are requested."""

    prefix: str
    candidates: Tuple[Candidate, ...]
    reference: Optional[str] = None
    """The original suffix: the factuality criterion's reference (required when it is on)."""
    known_pairs: Mapping[Tuple[int, int], float] = field(default_factory=dict)
    """Quality outcomes already judged: (i, j) -> share of votes for i over j."""
    known_scores: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    """Pointwise scores already judged: criterion -> {candidate index: score}."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))
        num = len(self.candidates)
        for (i, j), value in self.known_pairs.items():
            if not (0 <= i < num and 0 <= j < num) or i == j:
                raise InputError(f"known pair ({i}, {j}) does not name two of the {num} candidates")
            if not 0.0 <= value <= 1.0:
                raise InputError(f"known pair ({i}, {j}) = {value} is not in [0, 1]")
        for criterion, scores in self.known_scores.items():
            for index in scores:
                if not 0 <= index < num:
                    raise InputError(f"known {criterion} score for candidate {index}: only {num} candidates")

    @property
    def texts(self) -> Tuple[str, ...]:
        return tuple(c.text for c in self.candidates)

    def first_of_kind(self, kind: str) -> Optional[int]:
        return next((i for i, c in enumerate(self.candidates) if c.kind == kind), None)


@dataclass(frozen=True)
class GroupResult:
    """The judge's verdict on one group."""

    scores: Mapping[str, Tuple[Optional[float], ...]]
    """Criterion -> score per candidate in [0, 1] (None = failed)."""
    rewards: Tuple[Optional[float], ...]
    """Weighted sum of the criteria per candidate; None where any weighted criterion failed."""
    best: Optional[int]
    """Index of the highest reward; None when fewer than two candidates have a reward or all tie."""
    worst: Optional[int]
    """Index of the lowest reward; None under the same conditions as best."""
    pair_outcomes: Mapping[Tuple[int, int], Optional[float]]
    """Quality outcomes of the pairs judged or supplied, keyed with i < j."""
    num_calls: int
    """Judge requests sent for this group (one prompt, `judge.samples` votes each)."""
    num_failed_calls: int
    """Of those, requests with no valid answer (after retries, or past the deadline)."""
    num_failed_judgments: int
    """Pointwise scores and pairwise outcomes left without any valid vote."""
    latency_s: float
    """Wall time from the batch's start until this group's last judgment came back."""

    @property
    def ok(self) -> bool:
        """True when the group yields a usable (best, worst) pair."""
        return self.best is not None and self.worst is not None

    def to_json(self) -> Dict[str, object]:
        return {
            "scores": {name: list(values) for name, values in self.scores.items()},
            "rewards": list(self.rewards),
            "chosen": self.best,
            "rejected": self.worst,
            "pair_outcomes": [[i, j, v] for (i, j), v in sorted(self.pair_outcomes.items())],
            "num_calls": self.num_calls,
            "num_failed_calls": self.num_failed_calls,
            "num_failed_judgments": self.num_failed_judgments,
            "latency_s": round(self.latency_s, 4),
        }


@dataclass(frozen=True)
class RewriteRequest:
    prefix: str
    suffix: str
    suffix_len_tokens: int
    """N: the rewrite is cut to this many tokens of the policy tokenizer."""

    def __post_init__(self) -> None:
        if self.suffix_len_tokens <= 0:
            raise InputError(f"suffix_len_tokens must be positive, got {self.suffix_len_tokens}")
