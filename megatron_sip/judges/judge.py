"""The judge: a batch of groups in, one frozen `GroupResult` per group out.

Per group: pointwise criteria (safety, factuality) ask once per candidate; quality asks the pairs
its schedule picks, in both orders (or one seeded random order per pair, `judge.pair_order`) so
that a judge's position bias cancels. Scores and pairs the caller already knows (the
policy-free judgments from the rewrite store) are used as given and not asked again. Groups run
concurrently; the engine's transport bounds the load on the servers. Everything unanswered when
`judge.batch_deadline_s` runs out is a failure (None), never a win or a loss.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_sip.errors import InputError
from megatron_sip.judges import rewards as rewards_lib
from megatron_sip.judges.config import JudgeConfig
from megatron_sip.judges.criteria import CRITERIA, PAIRWISE, Ask, group_nonce
from megatron_sip.judges.engine import JudgeEngine, Votes
from megatron_sip.judges.ranking import Outcomes
from megatron_sip.judges.schedules import Pair, make_schedule
from megatron_sip.judges.types import GroupResult, JudgeGroup

logger = logging.getLogger(__name__)


def group_rng(seed: int, group: JudgeGroup) -> random.Random:
    """A random stream that depends only on the seed and the group's texts (not on timing)."""
    digest = hashlib.sha256("\0".join((str(seed), group.prefix, *group.texts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


@dataclass
class _Counts:
    calls: int = 0
    failed_calls: int = 0
    finished_at: float = field(default_factory=time.monotonic)


class AsyncJudge:
    """Use `await AsyncJudge.open(cfg)` (or `JudgeService` from synchronous code)."""

    def __init__(self, engine: JudgeEngine, cfg: JudgeConfig) -> None:
        self._engine = engine
        self._cfg = cfg

    @classmethod
    async def open(cls, cfg: JudgeConfig) -> "AsyncJudge":
        from megatron_sip.judges.build import open_engine

        return cls(await open_engine(cfg), cfg)

    async def aclose(self) -> None:
        await self._engine.aclose()

    def counters(self) -> Dict[str, int]:
        """The engine's and transport's event counts since opening (see ModelEngine.counters)."""
        return dict(self._engine.counters())

    def fingerprint(self) -> str:
        """The engine's fingerprint with the criteria: the key of stored policy-free judgments
        (judges/policy_free.py)."""
        from megatron_sip.judges.engine import digest

        return digest(self._engine.fingerprint(), sorted(self._cfg.criteria))

    async def judge(self, groups: Sequence[JudgeGroup], *,
                    deadline_s: Optional[float] = None) -> List[GroupResult]:
        for index, group in enumerate(groups):
            self._check(index, group)
        start = time.monotonic()
        deadline = start + (deadline_s if deadline_s is not None else self._cfg.batch_deadline_s)
        return list(await asyncio.gather(*(self._judge_group(g, start, deadline) for g in groups)))

    def _check(self, index: int, group: JudgeGroup) -> None:
        if "factuality" in self._cfg.criteria and group.reference is None:
            raise InputError(f"group {index}: the factuality criterion needs a reference (the original suffix)")
        for name in group.known_scores:
            if name not in self._cfg.criteria or CRITERIA[name].kind == PAIRWISE:
                raise InputError(f"group {index}: known_scores names '{name}', not a pointwise criterion "
                                 f"of judge.criteria")

    async def _judge_group(self, group: JudgeGroup, start: float, deadline: float) -> GroupResult:
        rng = group_rng(self._cfg.seed, group)
        counts = _Counts()
        tasks = {name: self._pointwise(name, group, counts, deadline)
                 for name in self._cfg.criteria if CRITERIA[name].kind != PAIRWISE}
        outcomes: Outcomes = {}
        if "quality" in self._cfg.criteria:
            tasks["quality"] = self._quality(group, rng, counts, deadline, outcomes)
        finished = await asyncio.gather(*tasks.values())
        scores = {name: tuple(values) for name, values in zip(tasks, finished)}
        rewards = rewards_lib.combine(scores, {c: self._cfg.weight(c) for c in scores}, len(group.candidates))
        best, worst = rewards_lib.best_and_worst(rewards, rng)
        failed = sum(v is None for name, values in scores.items() if name != "quality" for v in values)
        failed += sum(v is None for v in outcomes.values())
        return GroupResult(scores=scores, rewards=rewards, best=best, worst=worst,
                           pair_outcomes=dict(outcomes), num_calls=counts.calls,
                           num_failed_calls=counts.failed_calls, num_failed_judgments=failed,
                           latency_s=counts.finished_at - start)

    async def _pointwise(self, name: str, group: JudgeGroup, counts: _Counts,
                         deadline: float) -> List[Optional[float]]:
        known = group.known_scores.get(name, {})
        todo = [k for k in range(len(group.candidates)) if k not in known]
        nonce = group_nonce(group.prefix, group.texts, group.reference)
        asks = [Ask(name, group.prefix, (group.candidates[k].text,), group.reference, nonce) for k in todo]
        votes = await self._ask(asks, counts, deadline)
        scores: List[Optional[float]] = [known.get(k) for k in range(len(group.candidates))]
        for k, vote in zip(todo, votes):
            scores[k] = sum(vote) / len(vote) if vote else None
        return scores

    async def _quality(self, group: JudgeGroup, rng: random.Random, counts: _Counts, deadline: float,
                       outcomes: Outcomes) -> List[Optional[float]]:
        outcomes.update(_keyed(group.known_pairs))
        pivot = group.first_of_kind("suffix")
        run = make_schedule(self._cfg.schedule, num_candidates=len(group.candidates),
                            pivot=0 if pivot is None else pivot, rng=rng, budget=self._cfg.knockout_budget)
        while True:
            pairs = run.next_pairs(outcomes)
            if not pairs:
                return run.scores(outcomes)
            outcomes.update(await self._judge_pairs(pairs, group, rng, counts, deadline))

    async def _judge_pairs(self, pairs: List[Pair], group: JudgeGroup, rng: random.Random,
                           counts: _Counts, deadline: float) -> Outcomes:
        shown: List[Tuple[Pair, bool]] = []  # (pair, swapped): swapped shows j first
        for pair in pairs:
            if self._cfg.pair_order == "both":
                shown += [(pair, False), (pair, True)]
            else:
                shown.append((pair, rng.random() < 0.5))
        texts = group.texts
        nonce = group_nonce(group.prefix, texts, group.reference)
        asks = [Ask("quality", group.prefix, (texts[j], texts[i]) if swapped else (texts[i], texts[j]),
                    group.reference, nonce) for (i, j), swapped in shown]
        votes = await self._ask(asks, counts, deadline)
        for_first: Dict[Pair, List[float]] = {pair: [] for pair in pairs}
        for ((i, j), swapped), vote in zip(shown, votes):
            for_first[(i, j)].extend(1.0 - v if swapped else v for v in vote)
        return {pair: (sum(v) / len(v) if v else None) for pair, v in for_first.items()}

    async def _ask(self, asks: List[Ask], counts: _Counts, deadline: float) -> List[Votes]:
        if not asks:
            return []
        remaining = deadline - time.monotonic()
        votes: List[Votes] = [()] * len(asks)
        if remaining > 0:
            votes = await self._engine.ask(asks, deadline_s=remaining)
        counts.calls += len(asks)
        counts.failed_calls += sum(not v for v in votes)
        counts.finished_at = time.monotonic()
        return votes


def _keyed(known_pairs) -> Outcomes:
    """Known outcomes re-keyed with i < j."""
    return {((i, j) if i < j else (j, i)): (v if i < j else 1.0 - v) for (i, j), v in known_pairs.items()}
