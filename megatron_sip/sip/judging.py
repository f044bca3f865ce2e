"""Judging on behalf of a model-parallel replica.

Only model-parallel rank 0 of each replica talks to the judges; it turns rewards into
selections and broadcasts them (a small int tensor) to the other TP/PP ranks of its replica,
which hold the same candidates. With overlap, judging of the next step's candidates runs on
the judge client's own thread while this rank trains.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from megatron_sip.config import Config
from megatron_sip.data.codec import TextCodec
from megatron_sip.loss import PrefixMode
from megatron_sip.logging_utils import get_logger
from megatron_sip.parallel import ParallelContext
from megatron_sip.sip.candidates import CandidateSet
from megatron_sip.sip.selection import REWRITE, ROLLOUT, SUFFIX, Selection, select

_log = get_logger(__name__)
KINDS = (SUFFIX, REWRITE, ROLLOUT)
# Statistics the judging rank reports, each as [sum, count]; summed over DP replicas.
STAT_KEYS = tuple(
    [f"reward_{k}" for k in KINDS] + [f"chosen_{k}" for k in KINDS] +
    ["groups_preference", "groups_fallback", "groups_skipped", "groups_tied", "groups_judge_failed",
     "judge_calls", "judge_failed_calls", "judge_latency_s"])
# Judge client events counted since the previous step's report (summed over DP replicas): votes
# cut off by max_tokens, answers without a decision, refused log-probs, short choice lists, and
# the prompt characters a server's prefix cache can reuse.
EVENT_KEYS = ("votes_cut_off", "votes_without_decision", "logprobs_rejected", "short_choice_lists",
              "follow_up_requests", "oversized_responses", "prompt_chars", "prompt_chars_shared")
STAT_KEYS += tuple(f"judge_{key}" for key in EVENT_KEYS)


@dataclass
class PendingJudgment:
    """Candidates of one step and, on the judging rank, the future of their verdicts."""

    candidate_sets: List[CandidateSet]
    future: Optional["concurrent.futures.Future"]
    submitted_at: float


class ReplicaJudge:
    def __init__(self, cfg: Config, ctx: ParallelContext, codec: TextCodec) -> None:
        self.cfg, self.ctx, self.codec = cfg, ctx, codec
        self.service = None
        self.outage = False
        self._counted: Dict[str, int] = {}
        self._fingerprint = ""
        if ctx.mp_rank == 0:
            from megatron_sip.judges import JudgeService

            self.service = JudgeService.open(cfg.judge)
            self._fingerprint = self.service.fingerprint()

    def submit(self, candidate_sets: List[CandidateSet]) -> PendingJudgment:
        future = None
        if self.service is not None:
            future = self.service.submit([self._group(c) for c in candidate_sets])
        return PendingJudgment(candidate_sets, future, time.perf_counter())

    def _group(self, cands: CandidateSet):
        from megatron_sip.judges import Candidate, JudgeGroup
        from megatron_sip.judges.policy_free import known_judgments

        decode = self.codec.decode
        # Judgments of suffix and rewrite stored by `megatron-sip rewrite --judge` with this very
        # judge are not asked again: the online judge only sees what involves a rollout.
        known_pairs, known_scores = known_judgments(cands.sample.judgments, self._fingerprint,
                                                    self.cfg.judge.criteria, cands.kinds)
        return JudgeGroup(prefix=decode(cands.prefix),
                          candidates=[Candidate(decode(t), kind) for t, kind in zip(cands.tokens, cands.kinds)],
                          reference=decode(cands.sample.suffix), known_pairs=known_pairs, known_scores=known_scores)

    def resolve(self, pending: PendingJudgment) -> "tuple[List[Selection], Dict[str, List[float]]]":
        """Wait for the verdicts, select, and share the selections within the replica."""
        num = len(pending.candidate_sets)
        table = torch.zeros(num, 3, dtype=torch.int64)
        stats = torch.zeros(len(STAT_KEYS), 2, dtype=torch.float64)
        if self.service is not None:
            results = pending.future.result()
            selections = self._select(pending.candidate_sets, results, stats)
            self._add_events(stats)
            for p, sel in enumerate(selections):
                table[p] = torch.tensor([int(sel.mode), _idx(sel.chosen), _idx(sel.rejected)])
        if self.ctx.world_size > 1:
            buffer = table.to(self.ctx.device)
            dist.broadcast(buffer, src=self.ctx.mp_src, group=self.ctx.mp_group)
            table = buffer.cpu()
            stats_buffer = stats.to(self.ctx.device)
            dist.all_reduce(stats_buffer)  # only MP rank 0 of each replica contributed
            stats = stats_buffer.cpu()
        selections = [Selection(PrefixMode(int(m)), _none(c), _none(r)) for m, c, r in table.tolist()]
        return selections, {key: stats[i].tolist() for i, key in enumerate(STAT_KEYS)}

    def _select(self, candidate_sets: Sequence[CandidateSet], results: Sequence, stats: torch.Tensor) -> List[Selection]:
        row = {key: i for i, key in enumerate(STAT_KEYS)}

        def add(key: str, value: float, count: float = 1.0) -> None:
            stats[row[key]] += torch.tensor([value, count], dtype=torch.float64)

        selections = []
        judge_failed = 0
        for cands, result in zip(candidate_sets, results):
            sel = select(result.rewards, cands.kinds, objective=self.cfg.sip.objective,
                         on_judge_failure=self.cfg.sip.on_judge_failure)
            selections.append(sel)
            for kind, reward in zip(cands.kinds, result.rewards):
                if reward is not None and math.isfinite(reward):
                    add(f"reward_{kind}", reward)
            if sel.mode == PrefixMode.PREFERENCE:
                for kind in KINDS:
                    add(f"chosen_{kind}", float(cands.kinds[sel.chosen] == kind))
            add("groups_preference", float(sel.mode == PrefixMode.PREFERENCE))
            add("groups_fallback", float(sel.mode == PrefixMode.NLL_FALLBACK))
            add("groups_skipped", float(sel.mode == PrefixMode.SKIP))
            add("groups_tied", float(sel.reason == "tied"))
            add("groups_judge_failed", float(sel.reason == "judge_failed"))
            judge_failed += sel.reason == "judge_failed"
            add("judge_calls", result.num_calls)
            add("judge_failed_calls", result.num_failed_calls)
            add("judge_latency_s", result.latency_s)
        self._track_outage(judge_failed, len(selections))
        return selections

    def _add_events(self, stats: torch.Tensor) -> None:
        counters = self.service.counters()
        for key in EVENT_KEYS:
            row = STAT_KEYS.index(f"judge_{key}")
            stats[row] += torch.tensor([counters.get(key, 0) - self._counted.get(key, 0), 1.0],
                                       dtype=torch.float64)
        self._counted = counters

    def _track_outage(self, failed: int, total: int) -> None:
        down = total > 0 and failed == total
        if down and not self.outage:
            _log.warning("judge outage: no group of this step was judged; training continues under "
                         "sip.on_judge_failure=%s", self.cfg.sip.on_judge_failure)
        elif self.outage and not down:
            _log.warning("judge back: full SIP resumes")
        self.outage = down

    def close(self) -> None:
        if self.service is not None:
            self.service.close()
            self.service = None


def _idx(index: Optional[int]) -> int:
    # -2 encodes None (-1 already means "the original suffix" as fallback target).
    return -2 if index is None else index


def _none(value: int) -> Optional[int]:
    return None if value == -2 else value
