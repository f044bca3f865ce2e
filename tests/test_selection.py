"""Selection of chosen/rejected candidates from rewards, ties and failures."""

from __future__ import annotations

import math

from megatron_sip.loss import PrefixMode
from megatron_sip.sip.selection import select

KINDS = ["suffix", "rewrite", "rollout", "rollout"]


def test_dpo_picks_best_and_worst() -> None:
    s = select([0.2, 0.9, 0.1, 0.5], KINDS, objective="dpo", on_judge_failure="skip")
    assert (s.mode, s.chosen, s.rejected) == (PrefixMode.PREFERENCE, 1, 2)


def test_ties_break_toward_corpus_for_best_and_rollouts_for_worst() -> None:
    s = select([0.9, 0.9, 0.1, 0.1], KINDS, objective="dpo", on_judge_failure="skip")
    assert (s.chosen, s.rejected) == (0, 3)


def test_failed_candidates_are_ignored_not_counted_as_losses() -> None:
    s = select([None, 0.4, float("nan"), 0.6], KINDS, objective="dpo", on_judge_failure="skip")
    assert (s.chosen, s.rejected) == (3, 1)


def test_all_tied_or_failed_follow_the_policy() -> None:
    tied = select([0.5, 0.5, 0.5, 0.5], KINDS, objective="dpo", on_judge_failure="nll_on_rewrite")
    assert (tied.mode, tied.chosen, tied.reason) == (PrefixMode.NLL_FALLBACK, 1, "tied")
    failed = select([None, None, None, 0.5], KINDS, objective="dpo", on_judge_failure="nll_on_suffix")
    assert (failed.mode, failed.chosen, failed.reason) == (PrefixMode.NLL_FALLBACK, 0, "judge_failed")
    skipped = select([math.nan] * 4, KINDS, objective="rf_nll", on_judge_failure="skip")
    assert skipped.mode == PrefixMode.SKIP
    no_rewrite = select([0.1, 0.1], ["suffix", "rollout"], objective="dpo", on_judge_failure="nll_on_rewrite")
    assert (no_rewrite.mode, no_rewrite.chosen) == (PrefixMode.NLL_FALLBACK, 0)


def test_rf_nll_needs_one_judged_candidate() -> None:
    s = select([None, None, 0.3, None], KINDS, objective="rf_nll", on_judge_failure="skip")
    assert (s.mode, s.chosen, s.rejected) == (PrefixMode.PREFERENCE, 2, None)


def test_fallback_to_the_suffix_when_it_is_not_a_candidate() -> None:
    s = select([None, None], ["rollout", "rollout"], objective="dpo", on_judge_failure="nll_on_suffix")
    assert (s.mode, s.chosen) == (PrefixMode.NLL_FALLBACK, -1)
