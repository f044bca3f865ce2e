"""The training loop: setup, resume, steps, metrics, checkpoints, pre-emption, teardown.

What a step trains on is the objective's business (`sip.objective`): `nll` is the standard
next-token baseline; `dpo` and `rf_nll` are SIP (`megatron_sip.sip.step`). The loop owns what is
common: counters, the learning-rate schedule, non-finite losses, checkpoints and signals.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from megatron_sip.config import Config, to_yaml
from megatron_sip.errors import TrainingError
from megatron_sip.logging_utils import get_logger, setup_logging
from megatron_sip.parallel import ParallelContext, destroy_parallel, init_parallel
from megatron_sip.train.checkpoint import CheckpointManager
from megatron_sip.train.metrics import MetricsWriter
from megatron_sip.train.objectives import NllStep, ObjectiveStep
from megatron_sip.train.setup import TrainState, build_train_state
from megatron_sip.train.signals import StopRequest

_log = get_logger(__name__)


class NonFiniteLossError(TrainingError):
    """Too many consecutive steps had a NaN/inf loss (train.max_consecutive_nonfinite)."""


def train(cfg: Config, *, resume: Optional[str] = None) -> List[Dict[str, Any]]:
    """Run until `cfg.train.steps`; returns this process's per-step records (also in metrics.jsonl).

    `resume`: a checkpoint directory, or "auto" for the latest under run.output_dir/checkpoints.
    """
    setup_logging(cfg.run.log_level)
    ctx = init_parallel(cfg.model, seed=cfg.train.seed)
    try:
        return Trainer(cfg, ctx).run(resume=resume)
    finally:
        destroy_parallel()


def build_step(cfg: Config, ctx: ParallelContext, state: TrainState) -> ObjectiveStep:
    """The step of `sip.objective`: the loop sits above both the baseline and SIP."""
    if cfg.sip.objective == "nll":
        return NllStep(cfg, ctx, state)
    from megatron_sip.sip.step import SIPStep

    return SIPStep(cfg, ctx, state)


def _multiple(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


class Trainer:
    def __init__(self, cfg: Config, ctx: ParallelContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.output_dir = Path(cfg.run.output_dir)
        self.state = build_train_state(cfg, ctx)
        self.step_fn = build_step(cfg, ctx, self.state)
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", ctx, keep_last=cfg.train.keep_last)
        self.step = 0
        self.consumed_samples = 0
        self.counters: Dict[str, int] = {"nonfinite_steps": 0}
        self.last_saved_step = -1

    def run(self, *, resume: Optional[str] = None) -> List[Dict[str, Any]]:
        cfg, ctx = self.cfg, self.ctx
        if ctx.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(to_yaml(cfg))
        if resume:
            self._resume(resume)
        _log.info("world %d = TP %d x PP %d x DP %d on %s; objective %s; steps %d..%d, global batch %d",
                  ctx.world_size, ctx.tp_size, ctx.pp_size, ctx.dp_size, ctx.device.type, cfg.sip.objective,
                  self.step + 1, cfg.train.steps, cfg.train.global_batch_size)
        writer = MetricsWriter(self.output_dir, enabled=ctx.rank == 0, log_every=cfg.train.log_every,
                               total_steps=cfg.train.steps, tensorboard=cfg.run.tensorboard)
        stop = StopRequest().install()
        records: List[Dict[str, Any]] = []
        consecutive_nonfinite = 0
        try:
            while self.step < cfg.train.steps:
                record = self._one_step()
                consecutive_nonfinite = 0 if record["loss_finite"] else consecutive_nonfinite + 1
                records.append(record)
                writer.write(record)
                if consecutive_nonfinite >= cfg.train.max_consecutive_nonfinite:
                    raise NonFiniteLossError(
                        f"{consecutive_nonfinite} consecutive steps had a non-finite loss (last step "
                        f"{self.step}); lower train.lr or check the data; see {writer.path}")
                if stop.agreed(ctx.device):
                    _log.warning("%s received: saving a checkpoint at step %d and exiting",
                                 stop.signal_name or "stop signal", self.step)
                    self.save()
                    return records
                if _multiple(self.step, cfg.train.exit_interval) and self.step < cfg.train.steps:
                    _log.info("train.exit_interval: saving a checkpoint at step %d and exiting", self.step)
                    self.save()
                    return records
                if _multiple(self.step, cfg.train.save_every):
                    self.save()
            if self.last_saved_step != self.step:
                self.save()
            return records
        finally:
            stop.restore()
            writer.close()
            self.step_fn.close()

    def _one_step(self) -> Dict[str, Any]:
        started = time.perf_counter()
        outcome = self.step_fn.run(step=self.step + 1, consumed_samples=self.consumed_samples)
        lr = self.state.optimizer.param_groups[0]["lr"]
        self.step += 1
        self.consumed_samples += outcome.samples
        loss_finite = math.isfinite(outcome.loss) or not outcome.trained
        if not loss_finite:
            self.counters["nonfinite_steps"] += 1
        elapsed = time.perf_counter() - started
        return {
            "step": self.step,
            "loss": outcome.loss,
            "loss_finite": loss_finite,
            "lr": lr,
            "grad_norm": outcome.grad_norm,
            "update_applied": outcome.update_applied,
            "consumed_samples": self.consumed_samples,
            "tokens": outcome.tokens,
            "tokens_per_s": outcome.tokens / elapsed,
            "step_time_s": elapsed,
            **self.counters,
            **outcome.metrics,
        }

    def save(self) -> Path:
        self.last_saved_step = self.step
        return self.checkpoints.save(
            self.step, modules=self.step_fn.checkpoint_modules(), optimizer=self.state.optimizer,
            trainer_state={"consumed_samples": self.consumed_samples, "counters": dict(self.counters),
                           "scheduler": self.state.scheduler.state_dict()},
            rank_state={"step_fn": self.step_fn.state_dict()})

    def _resume(self, resume: str) -> None:
        path = self.checkpoints.latest() if resume == "auto" else Path(resume)
        if path is None:
            _log.info("no checkpoint under %s: starting from scratch", self.checkpoints.root)
            return
        saved = self.checkpoints.load(path, modules=self.step_fn.checkpoint_modules(), optimizer=self.state.optimizer)
        self.checkpoints.abandon_newer_than(path)
        self.step = self.last_saved_step = int(saved["step"])
        self.consumed_samples = int(saved["consumed_samples"])
        self.counters.update(saved["counters"])
        self.state.scheduler.load_state_dict(saved["scheduler"])
        self.step_fn.load_state_dict(saved["rank_state"].get("step_fn", {}))
