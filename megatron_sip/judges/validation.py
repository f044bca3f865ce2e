"""Judge validation: how a judge's verdicts on labelled groups agree with the labels.

A labelled group names a `preferred` and a `dispreferred` candidate, and optionally the
`criterion` the label is about (without one, the label holds for every criterion judged). Per
criterion, over the groups labelled for it:

- accuracy: share of groups whose judgment ranks the preferred candidate above the dispreferred
  one: pointwise, its score is higher; pairwise, the pair's outcome (both orders averaged) favours
  it. That is what SIP's selection sees. A tie counts half; a group without a valid judgment is
  left out and counted as failed.
- label accuracy (pointwise): share of the labelled candidates scored on their label's side of
  0.5 (preferred above, dispreferred below; exactly 0.5 counts half): whether the judge's
  absolute verdict is right, which rewards summed over criteria rely on.
- first-position rate (pairwise): share of the votes, over both orders of every labelled pair,
  that went to the text shown first: 0.5 for a judge without position bias, 1.0 for one that
  always answers "first".
- order consistency (pairwise): share of pairs whose two orders name the same winner (both a tie
  also agree): 1.0 for an order-free judge, about 0.5 for a coin, 0.0 for a judge that always
  picks one position.

Each comes with Wilson's 95% interval (evaluate/metrics.py; fractional outcomes are treated as
Bernoulli trials, which is conservative). The per-order votes come from `PairVoteRecorder`, an
engine wrapper that remembers each pairwise ask's votes, since a `GroupResult` keeps only the
orders' average.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from megatron_sip.evaluate.metrics import Estimate, PairVotes, mean_vote, pair_outcome, proportion
from megatron_sip.judges.config import JudgeConfig
from megatron_sip.judges.criteria import CRITERIA, PAIRWISE, Ask
from megatron_sip.judges.engine import JudgeEngine, Votes
from megatron_sip.judges.types import JudgeGroup

if TYPE_CHECKING:
    from megatron_sip.judges.service import JudgeService

ShownPair = Tuple[str, str, Tuple[str, str]]
"""(criterion, prefix, the two texts in the order shown)."""


class PairVoteRecorder:
    """A `JudgeEngine` that passes every ask through and remembers the votes of pairwise ones."""

    def __init__(self, engine: JudgeEngine) -> None:
        self._engine = engine
        self._votes: Dict[ShownPair, Votes] = {}

    async def ask(self, asks: Sequence[Ask], *, deadline_s: float) -> List[Votes]:
        votes = await self._engine.ask(asks, deadline_s=deadline_s)
        for ask, vote in zip(asks, votes):
            if CRITERIA[ask.criterion].kind == PAIRWISE:
                self._votes[(ask.criterion, ask.prefix, ask.texts)] = vote
        return votes

    def counters(self) -> Dict[str, int]:
        return self._engine.counters()

    def fingerprint(self) -> str:
        return self._engine.fingerprint()  # recording changes no vote

    async def aclose(self) -> None:
        await self._engine.aclose()

    def pop_pair_votes(self, group: JudgeGroup) -> Dict[str, List[list]]:
        """Criterion -> [[i, j, votes with i shown first, votes with j shown first]] for the
        pairs of `group` asked in both orders, i < j; forgotten once read."""
        texts = group.texts
        found: Dict[str, List[list]] = {}
        for criterion in [name for name, c in CRITERIA.items() if c.kind == PAIRWISE]:
            for i in range(len(texts)):
                for j in range(i + 1, len(texts)):
                    first = self._votes.pop((criterion, group.prefix, (texts[i], texts[j])), None)
                    second = self._votes.pop((criterion, group.prefix, (texts[j], texts[i])), None)
                    if first is not None and second is not None:
                        found.setdefault(criterion, []).append([i, j, list(first), list(second)])
        return found


@dataclass(frozen=True)
class CriterionValidation:
    """One criterion's agreement with the labels; the pointwise or pairwise fields are None
    where they do not apply."""

    criterion: str
    accuracy: Estimate
    label_accuracy: Optional[Estimate] = None
    first_position: Optional[Estimate] = None
    order_consistency: Optional[Estimate] = None

    def to_json(self) -> Dict[str, object]:
        fields = {"accuracy": self.accuracy, "label_accuracy": self.label_accuracy,
                  "first_position_rate": self.first_position, "order_consistency": self.order_consistency}
        return {"criterion": self.criterion, **{k: v.to_json() for k, v in fields.items() if v is not None}}

    def text(self) -> str:
        named = (("accuracy", self.accuracy), ("label accuracy", self.label_accuracy),
                 ("first-position rate", self.first_position), ("both orders agree", self.order_consistency))
        return f"{self.criterion}: " + "; ".join(f"{name} {format_estimate(e)}" for name, e in named if e is not None)


def format_estimate(estimate: Estimate) -> str:
    failed = f", {estimate.num_failed} failed" if estimate.num_failed else ""
    if estimate.value is None:
        return f"n/a (n=0{failed})"
    return f"{estimate.value:.3f} [{estimate.ci_low:.3f}, {estimate.ci_high:.3f}] (n={estimate.n}{failed})"


def side(share: float) -> float:
    """1 when `share` favours the first of two, 0 when the second, 0.5 on a tie."""
    return 1.0 if share > 0.5 else 0.0 if share < 0.5 else 0.5


def ranking_outcome(preferred: Optional[float], dispreferred: Optional[float]) -> Optional[float]:
    """1 when the preferred candidate scored higher, 0.5 on a tie, None when either failed."""
    if preferred is None or dispreferred is None:
        return None
    return side(0.5 + 0.5 * (preferred - dispreferred))


def labelled_for(line: Mapping, criterion: str) -> bool:
    return "preferred" in line and "dispreferred" in line and line.get("criterion", criterion) == criterion


def pointwise_validation(lines: Sequence[Mapping], criterion: str) -> CriterionValidation:
    ranked, labels = [], []
    for line in lines:
        scores = line["scores"][criterion]
        good, bad = scores[line["preferred"]], scores[line["dispreferred"]]
        ranked.append(ranking_outcome(good, bad))
        labels += [None if good is None else side(good), None if bad is None else 1.0 - side(bad)]
    return CriterionValidation(criterion, proportion(ranked), label_accuracy=proportion(labels))


def preferred_share(line: Mapping) -> Optional[float]:
    """The pair outcome (both orders averaged) for the preferred candidate over the dispreferred."""
    good, bad = line["preferred"], line["dispreferred"]
    for i, j, share in line["pair_outcomes"]:
        if (i, j) == (good, bad):
            return share
        if (i, j) == (bad, good):
            return None if share is None else 1.0 - share
    return None


def ordered_votes(line: Mapping, criterion: str) -> Optional[PairVotes]:
    """The labelled pair's votes for the text shown first, preferred shown first and second."""
    good, bad = line["preferred"], line["dispreferred"]
    for i, j, i_first, j_first in line.get("pair_votes", {}).get(criterion, []):
        if (i, j) == (good, bad):
            return PairVotes(checkpoint_first=tuple(i_first), baseline_first=tuple(j_first))
        if (i, j) == (bad, good):
            return PairVotes(checkpoint_first=tuple(j_first), baseline_first=tuple(i_first))
    return None


def orders_agree(pair: PairVotes) -> Optional[float]:
    """1 when both orders name the same winner (or both tie), 0 otherwise, None if one failed."""
    first, second = mean_vote(pair.checkpoint_first), mean_vote(pair.baseline_first)
    if first is None or second is None:
        return None
    return float(side(first) == side(1.0 - second))


def pairwise_validation(lines: Sequence[Mapping], criterion: str) -> CriterionValidation:
    shares = [preferred_share(line) for line in lines]
    pairs = [ordered_votes(line, criterion) for line in lines]
    both = [p for p in pairs if p is not None]
    first_votes = [v for p in both for v in (*p.checkpoint_first, *p.baseline_first)]
    return CriterionValidation(
        criterion, proportion([None if s is None else side(s) for s in shares]),
        first_position=proportion(first_votes),
        order_consistency=proportion([None if p is None else orders_agree(p) for p in pairs]))


def validate(lines: Sequence[Mapping], criteria: Sequence[str]) -> List[CriterionValidation]:
    """Per criterion with labelled groups, its agreement with the labels (module docstring)."""
    results = []
    for criterion in criteria:
        labelled = [line for line in lines if labelled_for(line, criterion)]
        if not labelled:
            continue
        if CRITERIA[criterion].kind == PAIRWISE:
            results.append(pairwise_validation(labelled, criterion))
        else:
            results.append(pointwise_validation(labelled, criterion))
    return results


def open_recording_service(cfg: JudgeConfig) -> Tuple["JudgeService", PairVoteRecorder]:
    """A JudgeService like `JudgeService.open(cfg)` whose engine records the pairwise votes."""
    from megatron_sip.judges.build import open_engine
    from megatron_sip.judges.judge import AsyncJudge
    from megatron_sip.judges.loop_thread import LoopThread
    from megatron_sip.judges.service import JudgeService

    loop = LoopThread()
    try:
        recorder = PairVoteRecorder(loop.run(open_engine(cfg)))
    except BaseException:
        loop.close()
        raise
    return JudgeService(AsyncJudge(recorder, cfg), loop), recorder


def judge_description(cfg: JudgeConfig) -> Dict[str, object]:
    """The judge behind a validation summary, as the config names it."""
    described: Dict[str, object] = {"backend": cfg.backend, "criteria": list(cfg.criteria)}
    if cfg.backend in ("openai", "embedded"):
        described.update(model=cfg.model if cfg.backend == "openai" else cfg.local_model,
                         decision=cfg.decision, logprobs=cfg.logprobs, samples=cfg.samples,
                         pair_order=cfg.pair_order)
    return described
