"""From judge rewards to what each prefix trains on.

Candidates of a prefix are ordered suffix, rewrite (when present), rollouts. The paper leaves
tie-breaking open; here the best is the *first* candidate with the top reward (so the corpus text
wins ties against rollouts) and the worst is the *last* with the bottom reward (a rollout loses
ties against the corpus). Groups with fewer than two judged candidates (dpo), or where every
judged candidate has the same reward, follow `sip.on_judge_failure`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from megatron_sip.loss import PrefixMode

SUFFIX, REWRITE, ROLLOUT = "suffix", "rewrite", "rollout"
FALLBACK_SUFFIX = -1
"""Selection index meaning "the original suffix" when it is not among the candidates."""


@dataclass(frozen=True)
class Selection:
    """What one prefix trains on; indices point into its candidate list."""

    mode: PrefixMode
    chosen: Optional[int] = None
    """Best candidate (PREFERENCE) or the NLL target (NLL_FALLBACK)."""
    rejected: Optional[int] = None
    """Worst candidate (dpo only)."""
    reason: str = "ok"
    """ok, judge_failed or tied: why a prefix fell back."""


def select(rewards: Sequence[Optional[float]], kinds: Sequence[str], *, objective: str,
           on_judge_failure: str) -> Selection:
    """Pick chosen/rejected (dpo) or the best (rf_nll) from one prefix's candidate rewards."""
    judged = [i for i, r in enumerate(rewards) if r is not None and math.isfinite(r)]
    needed = 2 if objective == "dpo" else 1
    if len(judged) < needed:
        return _fallback(kinds, on_judge_failure, "judge_failed")
    top = max(rewards[i] for i in judged)
    bottom = min(rewards[i] for i in judged)
    if len(judged) > 1 and top == bottom:
        return _fallback(kinds, on_judge_failure, "tied")
    best = next(i for i in judged if rewards[i] == top)
    if objective != "dpo":
        return Selection(PrefixMode.PREFERENCE, chosen=best)
    worst = next(i for i in reversed(judged) if rewards[i] == bottom)
    return Selection(PrefixMode.PREFERENCE, chosen=best, rejected=worst)


def _fallback(kinds: Sequence[str], on_judge_failure: str, reason: str) -> Selection:
    if on_judge_failure == "skip":
        return Selection(PrefixMode.SKIP, reason=reason)
    wanted = REWRITE if on_judge_failure == "nll_on_rewrite" else SUFFIX
    # A prefix without a stored rewrite falls back to its suffix, which is always known even
    # when it is not a candidate (sip.candidates without suffix).
    if wanted in kinds:
        target = kinds.index(wanted)
    else:
        target = kinds.index(SUFFIX) if SUFFIX in kinds else FALLBACK_SUFFIX
    return Selection(PrefixMode.NLL_FALLBACK, chosen=target, reason=reason)
