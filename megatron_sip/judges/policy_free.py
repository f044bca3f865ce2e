"""Judgments that involve no rollout, made once ahead of training and stored with the rewrites.

The suffix and its rewrite do not depend on the policy, so neither do their pointwise scores
(safety, factuality) nor the quality outcome of suffix vs rewrite (PAPER.md: computed once, ahead
of training). `megatron-sip rewrite --judge` stores them in the rewrite store under names that
carry the judge's fingerprint (judge.py `AsyncJudge.fingerprint`: model, prompts, sampling,
criteria):

    <fingerprint>/quality:suffix>rewrite     share of votes for the suffix over the rewrite
    <fingerprint>/<criterion>:suffix         pointwise score of the suffix
    <fingerprint>/<criterion>:rewrite        pointwise score of the rewrite

Training hands the ones with its own judge's fingerprint to the judge as known judgments, which it
then does not ask again; a changed judge or prompt has another fingerprint and is asked online.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from megatron_sip.judges.criteria import CRITERIA, PAIRWISE
from megatron_sip.judges.types import Candidate, GroupResult, JudgeGroup

SUFFIX, REWRITE = "suffix", "rewrite"
_PAIR = "quality:suffix>rewrite"


def judgment_names(fingerprint: str, criteria: Sequence[str]) -> List[str]:
    """The store columns of a judge with `fingerprint` judging `criteria`."""
    names = []
    for criterion in sorted(criteria):
        if CRITERIA[criterion].kind == PAIRWISE:
            names.append(f"{fingerprint}/{_PAIR}")
        else:
            names += [f"{fingerprint}/{criterion}:{SUFFIX}", f"{fingerprint}/{criterion}:{REWRITE}"]
    return names


def judgments_from_result(fingerprint: str, result: GroupResult) -> Dict[str, float]:
    """Store entries from the judge's result on the group [suffix, rewrite]; failed ones are left
    out (the store keeps NaN, and training asks them online)."""
    out: Dict[str, float] = {}
    for criterion, scores in result.scores.items():
        if CRITERIA[criterion].kind == PAIRWISE:
            share = result.pair_outcomes.get((0, 1))
            if share is not None:
                out[f"{fingerprint}/{_PAIR}"] = float(share)
            continue
        for index, kind in enumerate((SUFFIX, REWRITE)):
            if scores[index] is not None:
                out[f"{fingerprint}/{criterion}:{kind}"] = float(scores[index])
    return out


def known_judgments(stored: Mapping[str, float], fingerprint: str, criteria: Sequence[str],
                    kinds: Sequence[str]) -> Tuple[Dict[Tuple[int, int], float], Dict[str, Dict[int, float]]]:
    """(known_pairs, known_scores) for a JudgeGroup whose candidates have `kinds`, from the stored
    judgments made by a judge with this `fingerprint`; empty when there are none."""
    if SUFFIX not in kinds or REWRITE not in kinds:
        return {}, {}
    at = {SUFFIX: kinds.index(SUFFIX), REWRITE: kinds.index(REWRITE)}
    pairs: Dict[Tuple[int, int], float] = {}
    scores: Dict[str, Dict[int, float]] = {}
    for criterion in criteria:
        if CRITERIA[criterion].kind == PAIRWISE:
            share = _value(stored, f"{fingerprint}/{_PAIR}")
            if share is not None:
                pairs[(at[SUFFIX], at[REWRITE])] = share
            continue
        for kind, index in at.items():
            score = _value(stored, f"{fingerprint}/{criterion}:{kind}")
            if score is not None:
                scores.setdefault(criterion, {})[index] = score
    return pairs, scores


def suffix_rewrite_group(prefix: str, suffix: str, rewrite: str) -> JudgeGroup:
    """The group the offline judge sees: the suffix (also the factuality reference) and its rewrite."""
    return JudgeGroup(prefix, (Candidate(suffix, SUFFIX), Candidate(rewrite, REWRITE)), reference=suffix)


def _value(stored: Mapping[str, float], name: str) -> Optional[float]:
    value = stored.get(name)
    return None if value is None or not math.isfinite(value) else float(value)


class PolicyFreeJudge:
    """The rewrite job's `StaticJudge` (data/rewrite_job.py) over a `JudgeService`."""

    def __init__(self, service, criteria: Sequence[str]) -> None:
        self._service = service
        self.fingerprint = service.fingerprint()
        self.names = judgment_names(self.fingerprint, criteria)

    def __call__(self, requests) -> List[Dict[str, float]]:
        groups = [suffix_rewrite_group(r.request.prefix_text, r.request.suffix_text, r.rewrite_text)
                  for r in requests]
        return [judgments_from_result(self.fingerprint, result) for result in self._service.judge(groups)]
