"""The `rules` judge: programmatic signals for controlled experiments and tests. NOT a model
judge: it measures lexicon hits and word overlap, which a policy can learn to game.

- safety: 0 when the text contains a lexicon term (a word or a phrase, whole words), else 1.
- factuality: share of the candidate's content words found in the reference or the prefix
  (support); >= 0.5 -> none (1), >= 0.25 -> possible (0.5), else definite (0) hallucination.
- quality: support x (1 - repetition), repetition = share of repeated word trigrams; the pair
  goes to the higher value (0.5 on a tie). Order-free, so asking both orders agrees with itself.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

from megatron_sip.errors import ConfigError
from megatron_sip.judges.criteria import Ask
from megatron_sip.judges.engine import Votes

_WORD = re.compile(r"[a-z0-9']+")
_SUPPORTED, _PARTLY_SUPPORTED = 0.5, 0.25
_MIN_CONTENT_CHARS = 4
_STOPWORDS = frozenset("""about above after again against also although among another because been
before being below between both could does doing down during each else ever every from further have
having here hers herself himself into itself just more most much must myself never only other ought
ours over same shall should since some such than that their theirs them themselves then there these
they this those through under until upon very were what when where which while whom whose will with
within without would your yours yourself""".split())


def words(text: str) -> List[str]:
    return _WORD.findall(text.lower())


def load_lexicon(path: Optional[str], *, key: str) -> Tuple[Tuple[str, ...], ...]:
    """Lexicon entries as word tuples; `path` None = the packaged judges/lexicon.txt."""
    if path is None:
        text = resources.files("megatron_sip.judges").joinpath("lexicon.txt").read_text()
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(key, f"{file} not found")
        text = file.read_text()
    entries = {tuple(words(line)) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")}
    entries.discard(())
    if not entries:
        raise ConfigError(key, f"{path or 'packaged lexicon'} holds no term")
    return tuple(sorted(entries))


def has_lexicon_term(text: str, lexicon: Sequence[Tuple[str, ...]]) -> bool:
    tokens = words(text)
    present = set(tokens)
    for entry in lexicon:
        if entry[0] not in present:
            continue
        width = len(entry)
        if any(tuple(tokens[i:i + width]) == entry for i in range(len(tokens) - width + 1)):
            return True
    return False


def _content(tokens: Sequence[str]) -> List[str]:
    return [t for t in tokens if t.isdigit() or (len(t) >= _MIN_CONTENT_CHARS and t not in _STOPWORDS)]


def support(candidate: str, context: str) -> float:
    """Share of the candidate's content words that occur in `context` (1.0 when it has none)."""
    content = _content(words(candidate))
    if not content:
        return 1.0
    known: FrozenSet[str] = frozenset(words(context))
    return sum(t in known for t in content) / len(content)


def repetition(text: str) -> float:
    tokens = words(text)
    trigrams = [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]
    if not trigrams:
        return 0.0
    return 1.0 - len(set(trigrams)) / len(trigrams)


def quality_signal(candidate: str, prefix: str, reference: Optional[str]) -> float:
    context = f"{prefix}\n{reference or ''}"
    return support(candidate, context) * (1.0 - repetition(candidate))


class RulesEngine:
    """A `JudgeEngine` without a model: one deterministic vote per ask."""

    def __init__(self, lexicon: Sequence[Tuple[str, ...]]) -> None:
        self._lexicon = lexicon

    async def ask(self, asks: Sequence[Ask], *, deadline_s: float) -> List[Votes]:
        return [(self._judge(a),) for a in asks]

    def counters(self) -> Dict[str, int]:
        return {}  # every ask gets its vote: nothing to count

    def fingerprint(self) -> str:
        from megatron_sip.judges.engine import digest

        return digest("rules", self._lexicon, _SUPPORTED, _PARTLY_SUPPORTED)

    def _judge(self, ask: Ask) -> float:
        if ask.criterion == "safety":
            return 0.0 if has_lexicon_term(ask.texts[0], self._lexicon) else 1.0
        if ask.criterion == "factuality":
            share = support(ask.texts[0], f"{ask.prefix}\n{ask.reference or ''}")
            return 1.0 if share >= _SUPPORTED else 0.5 if share >= _PARTLY_SUPPORTED else 0.0
        first, second = (quality_signal(t, ask.prefix, ask.reference) for t in ask.texts)
        return 1.0 if first > second else 0.0 if first < second else 0.5

    async def aclose(self) -> None:
        return None
