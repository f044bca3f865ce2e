"""What one model produced on the held-out set, and every metric of the evaluation in one frozen
record (built from the votes by `metrics`; written by `report` and drawn by `plots`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

from megatron_sip.evaluate import metrics
from megatron_sip.evaluate.checkpoints import ModelSource
from megatron_sip.evaluate.judging import BASELINE, CHECKPOINT, REFERENCE, JudgeVotes
from megatron_sip.evaluate.metrics import Estimate
from megatron_sip.evaluate.pairs import PairScores


@dataclass(frozen=True)
class ModelResult:
    """One model's greedy generations and suffix NLL on the held-out prefixes."""

    source: ModelSource
    step: int
    """The checkpoint's training step."""
    texts: Tuple[str, ...]
    """Decoded greedy continuation per prefix (EOD removed)."""
    num_generated_tokens: Tuple[int, ...]
    nll_sums: Tuple[float, ...]
    """Summed -log p of the original suffix tokens, per prefix."""
    nll_tokens: Tuple[int, ...]
    """Suffix tokens scored, per prefix."""
    pair_scores: Optional[PairScores] = None
    """Both sides of every preference pair (evaluate --pairs), else None."""

    @property
    def label(self) -> str:
        return self.source.label


@dataclass(frozen=True)
class EvalSummary:
    win_rate: Optional[Estimate]
    """Checkpoint vs baseline pairwise quality; None without a baseline."""
    safety: Mapping[str, Estimate]
    """Model label -> share judged safe (majority vote)."""
    factuality: Mapping[str, Estimate]
    """Model label -> mean factuality score against the original suffix."""
    nll: Mapping[str, Estimate]
    """Model label -> mean NLL per token of the original suffixes."""
    reference: Mapping[str, Estimate]
    """safety / factuality of the original suffixes themselves (the judge's sanity anchor)."""
    first_position_rate: Optional[float]
    """Share of pairwise votes for the text shown first (0.5 = no position bias)."""
    order_consistency: Optional[float]
    """Share of prefixes on which both orders agree."""
    identical_generations: Optional[float]
    """Share of prefixes on which checkpoint and baseline generated the same text."""
    preference: Mapping[str, Estimate]
    """Model label -> preference accuracy on the --pairs file (empty without one)."""
    preference_margin: Mapping[str, float]
    """Model label -> mean log p(chosen) - log p(rejected) per token on those pairs."""
    differences: Mapping[str, Mapping[str, float]]
    """safety / nll -> checkpoint minus baseline, paired per prefix, with its bootstrap 95%
    interval (evaluate/stats.py); empty without a baseline."""


def summarize(votes: JudgeVotes, models: Sequence[ModelResult]) -> EvalSummary:
    by_label = {m.label: m for m in models}
    safety, factuality = votes.pointwise["safety"], votes.pointwise["factuality"]
    identical = None
    if BASELINE in by_label:
        pairs = zip(by_label[CHECKPOINT].texts, by_label[BASELINE].texts)
        identical = sum(a == b for a, b in pairs) / max(1, len(by_label[CHECKPOINT].texts))
    return EvalSummary(
        win_rate=metrics.win_rate(votes.pairs) if votes.pairs else None,
        safety={label: metrics.safety_rate(safety[label]) for label in by_label},
        factuality={label: metrics.mean_score(factuality[label]) for label in by_label},
        nll={m.label: metrics.per_token_mean(m.nll_sums, m.nll_tokens) for m in models},
        reference={"safety": metrics.safety_rate(safety[REFERENCE]),
                   "factuality": metrics.mean_score(factuality[REFERENCE])},
        first_position_rate=metrics.first_position_rate(votes.pairs),
        order_consistency=metrics.order_consistency(votes.pairs),
        identical_generations=identical,
        preference={m.label: metrics.proportion(m.pair_scores.outcomes()) for m in models if m.pair_scores},
        preference_margin={m.label: m.pair_scores.mean_margin() for m in models if m.pair_scores},
        differences=paired_differences(safety, by_label),
    )


def paired_differences(safety: Mapping[str, Sequence], by_label: Mapping[str, ModelResult]) -> Dict[str, Dict]:
    """Checkpoint minus baseline per prefix (same prefixes, same sampling draws): safe (majority
    vote) and suffix NLL per token. A prefix failed for either model is left out of both."""
    from megatron_sip.evaluate.stats import paired_difference

    if BASELINE not in by_label:
        return {}
    ours, theirs = by_label[CHECKPOINT], by_label[BASELINE]
    per_prefix = {
        "safety": zip(map(metrics.majority, safety[CHECKPOINT]), map(metrics.majority, safety[BASELINE])),
        "nll": zip(_per_token(ours), _per_token(theirs)),
    }
    differences = {}
    for name, pairs in per_prefix.items():
        kept = [(a, b) for a, b in pairs if a is not None and b is not None]
        if kept:
            differences[name] = paired_difference([a for a, _ in kept], [b for _, b in kept]).to_json()
    return differences


def _per_token(model: ModelResult) -> Tuple[Optional[float], ...]:
    return tuple(s / n if n else None for s, n in zip(model.nll_sums, model.nll_tokens))
