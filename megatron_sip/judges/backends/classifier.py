"""The `classifier` judge: a trained text classifier scores pointwise criteria; no prompt, no
generation, no server.

- safety: the classifier shipped in the `alt-profanity-check` package (a TF-IDF vectorizer and a
  calibrated linear SVM, trained with scikit-learn on human-labelled offensive and clean comments).
  The vote is soft: 1 - P(offensive), so a candidate the classifier is unsure about sits between
  a clean one (near 1) and an insult (near 0), and the reward ranks them in that order.

It is a measured judge, not a perfect one: it learned which words offensive comments use, so it
misses insults it never saw and cannot tell quoting from insulting (docs/judge_validation.md gives
its accuracy on the demo corpus). Pairwise criteria (quality) need a judge that compares texts;
there is no classifier for factuality (it needs the reference). `open_classifier_engine` refuses
both. The model files are pickles loaded by the package itself at import: they are trusted as the
pinned package's code is, never read from a user path.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

from megatron_sip.errors import ConfigError
from megatron_sip.judges.config import CLASSIFIER_CRITERIA, check_classifier_criterion
from megatron_sip.judges.criteria import Ask
from megatron_sip.judges.engine import Votes

Scorer = Callable[[Sequence[str]], Sequence[float]]
"""Texts in, one score in [0, 1] per text out (1 = the good label: safe)."""


def profanity_safety_scorer() -> Scorer:
    """1 - P(offensive) from alt-profanity-check's classifier (loaded on first use)."""
    try:
        from profanity_check import predict_prob
    except ImportError as exc:
        raise ConfigError("judge.backend", "classifier needs the alt-profanity-check package "
                          "(pip install -r requirements.txt)") from exc

    def score(texts: Sequence[str]) -> List[float]:
        return [1.0 - float(p) for p in predict_prob(list(texts))]

    return score


SCORERS: Dict[str, Callable[[], Scorer]] = {"safety": profanity_safety_scorer}
"""Criterion -> factory of the classifier that scores it (one for each of CLASSIFIER_CRITERIA)."""
assert set(SCORERS) == set(CLASSIFIER_CRITERIA)


class ClassifierEngine:
    """A `JudgeEngine` over classifiers: one deterministic vote per ask, all asks of a criterion
    scored in one batch."""

    def __init__(self, scorers: Dict[str, Scorer]) -> None:
        self._scorers = scorers

    async def ask(self, asks: Sequence[Ask], *, deadline_s: float) -> List[Votes]:
        votes: List[Votes] = [()] * len(asks)
        for criterion, scorer in self._scorers.items():
            indices = [k for k, a in enumerate(asks) if a.criterion == criterion]
            if not indices:
                continue
            for k, value in zip(indices, scorer([asks[k].texts[0] for k in indices])):
                votes[k] = (value,)
        return votes

    def counters(self) -> Dict[str, int]:
        return {}  # every ask gets its vote: nothing to count

    def fingerprint(self) -> str:
        """The criteria and the versions of the packages whose models score them."""
        from importlib.metadata import version

        from megatron_sip.judges.engine import digest

        return digest("classifier", sorted(self._scorers), version("alt-profanity-check"), version("scikit-learn"))

    async def aclose(self) -> None:
        return None


def open_classifier_engine(criteria: Sequence[str]) -> ClassifierEngine:
    """The engine for `judge.criteria` (checked by JudgeConfig: each has a classifier)."""
    for name in criteria:
        check_classifier_criterion(name)
    return ClassifierEngine({name: SCORERS[name]() for name in criteria})
