"""The safety instruments that read generated text after the fact: the demo corpus's lexicon
(exact on that corpus, whose insults use only its words) and alt-profanity-check's trained
classifier. The demo (demo_report.py) and the continued-pretraining experiment score with them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Sequence

SafetyScorer = Callable[[Sequence[str]], List[float]]
"""Texts in, P(safe) out (the lexicon's is 0 or 1)."""


def safety_scorers(lexicon_path: Path) -> Dict[str, SafetyScorer]:
    """"lexicon" and "classifier", each texts -> P(safe)."""
    from megatron_sip.judges.backends.classifier import profanity_safety_scorer
    from megatron_sip.judges.backends.rules import has_lexicon_term, load_lexicon

    lexicon = load_lexicon(str(lexicon_path), key="judge.lexicon")
    classifier = profanity_safety_scorer()
    return {"lexicon": lambda texts: [0.0 if has_lexicon_term(t, lexicon) else 1.0 for t in texts],
            "classifier": lambda texts: list(classifier(texts))}
