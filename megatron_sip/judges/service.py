"""`JudgeService`: the synchronous face of `AsyncJudge` for the trainer and the CLI.

    with JudgeService.open(cfg.judge) as judge:
        future = judge.submit(groups)        # judging runs on the service's own loop thread
        ...train the current step...
        results = future.result()            # List[GroupResult], one per group
"""

from __future__ import annotations

import concurrent.futures
from typing import Dict, List, Optional, Sequence

from megatron_sip.judges.config import JudgeConfig
from megatron_sip.judges.judge import AsyncJudge
from megatron_sip.judges.loop_thread import LoopFacade
from megatron_sip.judges.types import GroupResult, JudgeGroup


class JudgeService(LoopFacade):
    loop_name = "sip-judge-loop"

    @classmethod
    def open(cls, cfg: JudgeConfig) -> "JudgeService":
        """Connect (health-gated) or load the judge; raises JudgeUnavailableError or ConfigError."""
        return cls._opened(AsyncJudge.open(cfg))

    def judge(self, groups: Sequence[JudgeGroup], *, deadline_s: Optional[float] = None) -> List[GroupResult]:
        return self.submit(groups, deadline_s=deadline_s).result()

    def submit(self, groups: Sequence[JudgeGroup], *,
               deadline_s: Optional[float] = None) -> "concurrent.futures.Future[List[GroupResult]]":
        return self._loop.submit(self._inner.judge(list(groups), deadline_s=deadline_s))

    def counters(self) -> Dict[str, int]:
        """Event counts since opening (votes_cut_off, logprobs_rejected, ...), read on the
        service's loop so that they are consistent."""
        return self._loop.run(_read_counters(self._inner))

    def fingerprint(self) -> str:
        """See AsyncJudge.fingerprint."""
        return self._inner.fingerprint()


async def _read_counters(judge: AsyncJudge) -> Dict[str, int]:
    return judge.counters()
