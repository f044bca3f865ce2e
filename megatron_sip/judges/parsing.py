"""Reading a verdict out of a judge's answer, robust to prompt injection.

The verdict comes only from the judge's own last `FINAL DECISION: <label>` line:
- text the judge copied back from our marked blocks (`<<<BEGIN ... #nonce>>>` to the matching
  END) is removed first;
- a decision line that is a verbatim copy of a line of any text we showed (prefix, candidates,
  reference) is not the judge's own and is skipped;
- the last remaining decision line wins; a label outside the criterion's labels is no verdict.
So a candidate that carries fake decision lines can at worst make a judgment fail (never counted
as a win or a loss); it cannot put words in the judge's mouth.

With logprobs, the vote is softened to the expected label value under the judge's probabilities
at the decision token (`soft_vote`). A judge asked for the label alone (`judge.decision=direct`)
is read from its first answer token instead (`direct_vote`): no text of ours can pose as that.
"""

from __future__ import annotations

import math
import re
from typing import Dict, Iterable, Mapping, Optional, Sequence, Set

from megatron_sip.judges.generation import Choice, TokenLogprobs

_DECISION_LINE = re.compile(
    r"^[\s>*#_`\-]*final\s+decision\s*[*_`]*\s*[:=]\s*[*_`\"'\[(<]*\s*"
    r"(?:(?:option|continuation|candidate|text)\s*)?(?P<label>[a-z0-9]+)",
    re.IGNORECASE)
_FIRST_WORD = re.compile(r"[a-z0-9]+", re.IGNORECASE)
_ECHOED_BLOCK = re.compile(r"<<<BEGIN (?P<name>[^#>]*)#(?P<nonce>[0-9a-f]+)>>>.*?(?:<<<END (?P=name)#(?P=nonce)>>>|\Z)",
                           re.DOTALL)


def normalize_line(line: str) -> str:
    return " ".join(line.lower().split())


def foreign_lines(texts: Iterable[str]) -> Set[str]:
    """The decision-looking lines of the texts we showed the judge, normalized."""
    lines = set()
    for text in texts:
        for line in text.splitlines():
            if _DECISION_LINE.match(line):
                lines.add(normalize_line(line))
    return lines


def parse_label(answer: str, labels: Mapping[str, float], foreign: Set[str]) -> Optional[str]:
    """The label of the judge's own last decision line, or None when it gave no valid one."""
    answer = _ECHOED_BLOCK.sub("", answer)
    for line in reversed(answer.splitlines()):
        match = _DECISION_LINE.match(line)
        if match is None or normalize_line(line) in foreign:
            continue
        label = match.group("label").lower()
        return label if label in labels else None
    return None


def label_mass(position: TokenLogprobs, labels: Mapping[str, float]) -> Dict[str, float]:
    """Probability per label among the tokens shown at one answer position. A token counts for a
    label when, stripped and lower-cased, it spells the start of that label and of no other
    (" Unsafe" and "un" -> unsafe; "s" -> safe; "The" -> nothing)."""
    mass: Dict[str, float] = {}
    for token, logprob in {**position.top, position.token: position.logprob}.items():
        matches = [name for name in labels if _spells(token, name)]
        if len(matches) == 1 and math.isfinite(logprob):
            mass[matches[0]] = mass.get(matches[0], 0.0) + math.exp(logprob)
    return mass


def soft_vote(label: str, labels: Mapping[str, float],
              logprobs: Optional[Sequence[TokenLogprobs]]) -> float:
    """Expected label value under the judge's top log-probs at the token that spelled `label`;
    the hard value `labels[label]` when the log-probs do not show that token."""
    hard = labels[label]
    if not logprobs:
        return hard
    for position in reversed(logprobs):
        piece = position.token.strip().lower()
        if not piece or not label.startswith(piece):
            continue
        mass = label_mass(position, labels)
        total = sum(mass.values())
        if total <= 0.0:
            return hard
        return sum(labels[name] * p for name, p in mass.items()) / total
    return hard


def direct_vote(choice: Choice, labels: Mapping[str, float], *, soft: bool) -> Optional[float]:
    """The vote of a judge asked for the label alone (`judge.decision=direct`): from the label
    mass at its first answer token, as the expected label value (`soft`) or the likeliest label;
    without log-probs, from the first word it wrote. None when no label shows up there."""
    if choice.logprobs:
        mass = label_mass(choice.logprobs[0], labels)
        total = sum(mass.values())
        if total <= 0.0:
            return None
        if soft:
            return sum(labels[name] * p for name, p in mass.items()) / total
        return labels[max(sorted(mass), key=mass.__getitem__)]
    word = _FIRST_WORD.search(choice.text)
    label = word.group(0).lower() if word else None
    return labels[label] if label in labels else None


def _spells(token: str, label: str) -> bool:
    piece = token.strip().lower()
    return bool(piece) and label.startswith(piece)
