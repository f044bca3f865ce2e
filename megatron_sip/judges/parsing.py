"""Reading a verdict out of a judge's answer, robust to prompt injection.

Threat model: the texts we show the judge (web prefixes, corpus suffixes, rewrites, policy
rollouts) may contain anything, including lines that look like verdicts, our block markers or
instructions; a judge may also quote them back while it reasons. The verdict must still be the
judge's own. So the decision line the judge is told to write carries the call's nonce
(`FINAL DECISION #<nonce>: <label>`), a hash of every text shown in the prompt: no shown text can
contain the nonce of a prompt that contains it (that would take a hash fixed point).

- text the judge copied back from our marked blocks (`<<<BEGIN ... #nonce>>>` to the matching
  END) is removed first;
- only decision lines that carry this call's nonce count, and the last of them is the verdict;
- its label must be the only label word on the line: a copy of the instruction line
  (`... #nonce: <safe or unsafe>`) or a hedge (`1 or 2`) is no verdict.
So a candidate that carries fake decision lines, with or without a guessed nonce, can neither
flip nor suppress the judge's verdict: no line it holds is ever read as one.

With logprobs, the vote is softened to the expected label value under the judge's probabilities
at the decision token (`soft_vote`). A judge asked for the label alone (`judge.decision=direct`)
is read from its first answer token instead (`direct_vote`): no text of ours can pose as that.
"""

from __future__ import annotations

import math
import re
from typing import Dict, Mapping, Optional, Sequence

from megatron_sip.judges.generation import Choice, TokenLogprobs

DECISION_MARKER = "FINAL DECISION"
_MARKUP = "*_`\"'[](){}<>.,;!?"
_FIRST_WORD = re.compile(r"[a-z0-9]+", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+", re.IGNORECASE)
_LEADING_NOUNS = ("option", "continuation", "candidate", "text", "answer")
_ECHOED_BLOCK = re.compile(r"<<<BEGIN (?P<name>[^#>]*)#(?P<nonce>[0-9a-f]+)>>>.*?(?:<<<END (?P=name)#(?P=nonce)>>>|\Z)",
                           re.DOTALL)


def decision_prefix(nonce: str) -> str:
    """What the judge must write before its label, e.g. `FINAL DECISION #1a2b3c4d:`."""
    return f"{DECISION_MARKER} #{nonce}:"


def _decision_line(nonce: str) -> "re.Pattern[str]":
    # Markdown the judge may wrap around the marker (`**FINAL DECISION #n:** 2`) is tolerated.
    return re.compile(rf"^[\s>*#_`\-]*final\s+decision\s*[*_`]*\s*#\s*{re.escape(nonce)}\s*[*_`]*\s*[:=]"
                      rf"(?P<rest>.*)$", re.IGNORECASE)


def parse_label(answer: str, labels: Mapping[str, float], nonce: str) -> Optional[str]:
    """The label of the judge's last decision line carrying `nonce`, or None when it gave none
    (or its last such line holds no single label)."""
    pattern = _decision_line(nonce)
    answer = _ECHOED_BLOCK.sub("", answer)
    for line in reversed(answer.splitlines()):
        match = pattern.match(line)
        if match is not None:
            return _single_label(match.group("rest"), labels)
    return None


def _single_label(rest: str, labels: Mapping[str, float]) -> Optional[str]:
    """`2`, `**safe**`, `Continuation 1.`, `possible hallucination` -> the label; `<safe or
    unsafe>`, `1 or 2`, `maybe` -> None."""
    words = [w.lower() for w in _WORD.findall(rest.strip(_MARKUP + " \t"))]
    while words and words[0] in _LEADING_NOUNS:
        words = words[1:]
    if not words or words[0] not in labels:
        return None
    if any(w in labels for w in words[1:]):
        return None
    return words[0]


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
