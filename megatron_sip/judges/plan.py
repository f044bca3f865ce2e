"""Judge capacity planning: the judge work of one SIP step, and the judge replicas a trainer
replica needs so that waiting for verdicts stays a small share of the step.

Work per step (what `judges/judge.py` asks): every prefix of the global batch is one group of
C = suffix + rewrite + K rollouts candidates; each pointwise criterion asks once per candidate,
quality asks the schedule's pairs (round robin C(C-1)/2, pivot C-1, knockout its brackets or its
budget) in one or both orders; judgments stored by `megatron-sip rewrite --judge` are not asked.
Prompt tokens come from rendering such a group with the configured lengths and the policy's
tokenizer (`cacheable` = the start a prompt shares with another of its group, what servers' prefix
caches reuse).

Time: with R judge replicas serving `rate` judgments/s each, judging a step takes J = calls /
(R x rate). Without overlap the trainer waits all of J; with `sip.overlap_judging` the judging of
step t+1 runs while step t trains (T seconds), so only max(0, J - T) stays exposed. The exposed
share is wait / (T + wait). For a share <= s: overlap needs J <= T / (1 - s), no overlap J <= T s / (1 - s).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from megatron_sip.judges.criteria import CRITERIA, PAIRWISE, Ask, PromptSet, group_nonce


@dataclass(frozen=True)
class StepShape:
    """What one step brings to the judges."""

    num_prefixes: int
    num_candidates: int
    prefix_tokens: int
    candidate_tokens: int
    criteria: Sequence[str]
    schedule: str
    knockout_budget: float
    both_orders: bool
    stored_policy_free: bool
    """Suffix and rewrite judgments come from the rewrite store (`megatron-sip rewrite --judge`)."""
    has_rewrite: bool

    @classmethod
    def of_run(cls, cfg, *, stored_policy_free: bool = False) -> "StepShape":
        """The shape of a run's step from its config (`sip.candidates` says which kinds exist)."""
        sip, judge = cfg.sip, cfg.judge
        has_rewrite = "rewrite" in sip.candidates
        num_candidates = (("suffix" in sip.candidates) + has_rewrite
                          + (sip.num_rollouts if "rollouts" in sip.candidates else 0))
        return cls(num_prefixes=cfg.train.global_batch_size, num_candidates=num_candidates,
                   prefix_tokens=cfg.data.max_prefix_len, candidate_tokens=sip.suffix_len,
                   criteria=judge.criteria, schedule=judge.schedule, knockout_budget=judge.knockout_budget,
                   both_orders=judge.pair_order == "both", stored_policy_free=stored_policy_free,
                   has_rewrite=has_rewrite)


@dataclass(frozen=True)
class StepWork:
    calls: int
    prompt_tokens: int
    cacheable_tokens: int
    output_tokens: int

    @property
    def new_tokens(self) -> int:
        return self.prompt_tokens - self.cacheable_tokens


def quality_pairs(shape: StepShape) -> int:
    """Pairs the schedule judges for one group (knockout: the larger of its brackets and its budget)."""
    c = shape.num_candidates
    if c < 2:
        return 0
    all_pairs = c * (c - 1) // 2
    if shape.schedule == "pivot":
        pairs = c - 1
    elif shape.schedule == "knockout":
        pairs = min(all_pairs, max(math.ceil(3 * c / 2) - 2, math.ceil(shape.knockout_budget * all_pairs)))
    else:
        pairs = all_pairs
    if shape.stored_policy_free and shape.has_rewrite:
        pairs -= 1  # suffix vs rewrite
    return pairs


def calls_per_group(shape: StepShape) -> Dict[str, int]:
    calls = {}
    stored = 2 if shape.stored_policy_free and shape.has_rewrite else 0
    for criterion in shape.criteria:
        if CRITERIA[criterion].kind == PAIRWISE:
            calls[criterion] = quality_pairs(shape) * (2 if shape.both_orders else 1)
        else:
            calls[criterion] = shape.num_candidates - stored
    return calls


def calls_per_step(shape: StepShape) -> int:
    return sum(calls_per_group(shape).values()) * shape.num_prefixes


def step_work(shape: StepShape, prompts: PromptSet, tokenizer, *, output_tokens_per_call: int) -> StepWork:
    """Calls and tokens of one step, from one rendered group (every group has the same shape)."""
    from megatron_sip.judges.engine import shared_prefix_lengths

    rng = random.Random(0)
    prefix = _text(tokenizer, rng, shape.prefix_tokens)
    texts = [_text(tokenizer, rng, shape.candidate_tokens) for _ in range(shape.num_candidates)]
    nonce = group_nonce(prefix, texts, texts[0])
    calls = calls_per_group(shape)
    prompt_tokens = cacheable = 0
    for criterion, count in calls.items():
        if count == 0:
            continue
        if CRITERIA[criterion].kind == PAIRWISE:
            pairs = [(i, j) for i in range(len(texts)) for j in range(len(texts)) if i != j]
            asks = [Ask(criterion, prefix, (texts[i], texts[j]), texts[0], nonce) for i, j in pairs]
        else:
            asks = [Ask(criterion, prefix, (text,), texts[0], nonce) for text in texts]
        tokens = [tokenizer.encode(prompts.render(a).prompt, add_special_tokens=False) for a in asks]
        mean_tokens = sum(len(t) for t in tokens) / len(tokens)
        shared_share = sum(shared_prefix_lengths(tokens)) / sum(len(t) for t in tokens)
        prompt_tokens += round(count * mean_tokens)
        cacheable += round(count * mean_tokens * shared_share)
    num_calls = calls_per_step(shape)
    return StepWork(calls=num_calls, prompt_tokens=prompt_tokens * shape.num_prefixes,
                    cacheable_tokens=cacheable * shape.num_prefixes,
                    output_tokens=num_calls * output_tokens_per_call)


@dataclass(frozen=True)
class Capacity:
    judge_s: float
    """Seconds to judge one step with `replicas` judge replicas."""
    exposed_share_overlap: float
    exposed_share_no_overlap: float
    replicas_needed_overlap: int
    replicas_needed_no_overlap: int


def capacity(calls: int, rate_per_replica: float, trainer_step_s: float, *, replicas: int,
             target_share: float = 0.1) -> Capacity:
    """Exposed judge wait shares and the replicas needed for `target_share` (module docstring)."""
    single = calls / rate_per_replica
    judge_s = single / replicas
    overlap_wait = max(0.0, judge_s - trainer_step_s)
    return Capacity(
        judge_s=judge_s,
        exposed_share_overlap=overlap_wait / (trainer_step_s + overlap_wait),
        exposed_share_no_overlap=judge_s / (trainer_step_s + judge_s),
        replicas_needed_overlap=max(1, math.ceil(single * (1 - target_share) / trainer_step_s)),
        replicas_needed_no_overlap=max(1, math.ceil(single * (1 - target_share) / (trainer_step_s * target_share))))


def _text(tokenizer, rng: random.Random, num_tokens: int) -> str:
    """Text of about `num_tokens` tokens of common words (what the prompts' size depends on)."""
    words = "the a of river town old market stone road north winter light people said long year".split()
    ids: List[int] = []
    while len(ids) < num_tokens:
        ids += tokenizer.encode(" " + " ".join(rng.choice(words) for _ in range(64)), add_special_tokens=False)
    return tokenizer.decode(ids[:num_tokens])


def probe_rate(cfg, shape: StepShape, tokenizer, *, num_groups: int = 1, deadline_s: float = 1800.0) -> Optional[float]:
    """Judgments per second of the live judge in `cfg` on groups of this step's shape (one group
    warms up first); None when nothing was answered."""
    import time

    from megatron_sip.judges.service import JudgeService
    from megatron_sip.judges.types import Candidate, JudgeGroup

    rng = random.Random(1)

    kinds = (["suffix", "rewrite"] if shape.has_rewrite else ["suffix"])[: shape.num_candidates]
    kinds += ["rollout"] * (shape.num_candidates - len(kinds))

    def group() -> JudgeGroup:
        texts = [_text(tokenizer, rng, shape.candidate_tokens) for _ in range(shape.num_candidates)]
        return JudgeGroup(_text(tokenizer, rng, shape.prefix_tokens),
                          tuple(Candidate(t, k) for t, k in zip(texts, kinds)), reference=texts[0])

    with JudgeService.open(cfg) as judge:
        judge.judge([group()], deadline_s=deadline_s)
        groups = [group() for _ in range(num_groups)]
        start = time.perf_counter()
        results = judge.judge(groups, deadline_s=deadline_s)
        elapsed = time.perf_counter() - start
    answered = sum(r.num_calls - r.num_failed_calls for r in results)
    return answered / elapsed if answered else None
