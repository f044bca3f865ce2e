"""The three criteria of the paper as data: what the judge sees, which labels it may answer, and
what each label is worth.

- safety (pointwise): the candidate only; safe -> 1, unsafe -> 0.
- quality (pairwise): prefix + two candidates; "1" -> 1 (the first shown wins), "2" -> 0.
- factuality (pointwise with reference): prefix + candidate + the original suffix; no / possible /
  definite hallucination -> 1 / 0.5 / 0.
A judgment's value is the mean over its valid votes; with no valid vote it is None (failed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

from megatron_sip.judges import prompts
from megatron_sip.judges.parsing import decision_prefix

POINTWISE = "pointwise"
PAIRWISE = "pairwise"


@dataclass(frozen=True)
class Criterion:
    name: str
    kind: str
    labels: Mapping[str, float]
    fields: Tuple[str, ...]
    """Template fields the code fills."""


CRITERIA: Dict[str, Criterion] = {
    "safety": Criterion("safety", POINTWISE, {"safe": 1.0, "unsafe": 0.0}, ("candidate",)),
    "quality": Criterion("quality", PAIRWISE, {"1": 1.0, "2": 0.0}, ("prefix", "option_1", "option_2")),
    "factuality": Criterion("factuality", POINTWISE, {"none": 1.0, "possible": 0.5, "definite": 0.0},
                            ("prefix", "candidate", "reference")),
}


@dataclass(frozen=True)
class Ask:
    """One judgment to request: `texts` are the candidate(s) in the order shown."""

    criterion: str
    prefix: str
    texts: Tuple[str, ...]
    reference: Optional[str] = None
    nonce: Optional[str] = None
    """The block nonce, shared by every ask of one group (`group_nonce`) so that their prompts
    start with the same bytes, which servers' prefix caches reuse; None = hashed from this ask's
    own texts. Either way it is a hash over every text the prompt shows."""


def group_nonce(prefix: str, texts: Sequence[str], reference: Optional[str]) -> str:
    """The nonce of every prompt about one group: a hash of all its texts, so no text of the group
    can carry it."""
    return prompts.nonce_for(prefix, *texts, reference or "")


@dataclass(frozen=True)
class RenderedAsk:
    prompt: str
    nonce: str
    """The nonce of the prompt's blocks and of the decision line the judge must write."""


class PromptSet:
    """The criteria's templates, loaded once and checked."""

    def __init__(self, names: Sequence[str], *, prompt_dir: Optional[str], section: str = "judge",
                 direct: bool = False) -> None:
        # direct templates (<criterion>_direct.txt) ask for the label alone, with no decision line.
        self._direct = direct
        self._templates = {
            name: prompts.load_template(f"{name}_direct" if direct else name, required=CRITERIA[name].fields,
                                        prompt_dir=prompt_dir, key=f"{section}.prompt_dir",
                                        needs_decision_line=not direct)
            for name in names
        }

    def text(self) -> str:
        """Every template as loaded (part of a judge's fingerprint: another prompt, another judge)."""
        return "\0".join(f"{name}\0{t.template.template}" for name, t in sorted(self._templates.items()))

    def render(self, ask: Ask) -> RenderedAsk:
        nonce = ask.nonce or prompts.nonce_for(ask.criterion, ask.prefix, *ask.texts, ask.reference or "")
        if ask.criterion == "quality":
            fields = {"prefix": prompts.block("START", ask.prefix, nonce),
                      "option_1": prompts.block("CONTINUATION 1", ask.texts[0], nonce),
                      "option_2": prompts.block("CONTINUATION 2", ask.texts[1], nonce)}
        elif ask.criterion == "safety":
            fields = {"candidate": prompts.block("TEXT", ask.texts[0], nonce)}
        else:
            fields = {"prefix": prompts.block("START", ask.prefix, nonce),
                      "candidate": prompts.block("CONTINUATION", ask.texts[0], nonce),
                      "reference": prompts.block("REFERENCE", ask.reference or "", nonce)}
        if not self._direct:
            fields["decision"] = decision_prefix(nonce)
        return RenderedAsk(prompt=self._templates[ask.criterion].render(**fields), nonce=nonce)
