"""The training loop: parallel setup, model and optimizer, steps, metrics, teardown.

This is the `nll` baseline (standard next-token pretraining on Megatron-Core) that SIP is
compared against and extends; without `data.paths` it trains on synthetic tokens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List

from megatron_sip.config import Config, to_yaml
from megatron_sip.logging_utils import get_logger, setup_logging
from megatron_sip.parallel import ParallelContext, destroy_parallel, init_parallel
from megatron_sip.train.batch import synthetic_micro_batches
from megatron_sip.train.metrics import MetricsWriter
from megatron_sip.train.setup import build_train_state
from megatron_sip.train.step import nll_forward_step, train_step

_log = get_logger(__name__)


def train(cfg: Config) -> List[Dict[str, Any]]:
    """Run `cfg.train.steps` steps; returns the per-step records (also in metrics.jsonl)."""
    setup_logging(cfg.run.log_level)
    ctx = init_parallel(cfg.model, seed=cfg.train.seed)
    try:
        return _train(cfg, ctx)
    finally:
        destroy_parallel()


def _train(cfg: Config, ctx: ParallelContext) -> List[Dict[str, Any]]:
    if cfg.sip.objective != "nll":
        raise NotImplementedError(f"sip.objective={cfg.sip.objective} needs the SIP trainer; "
                                  "this build trains sip.objective=nll only")
    output_dir = Path(cfg.run.output_dir)
    if ctx.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(to_yaml(cfg))
    _log.info("world %d = TP %d x PP %d x DP %d on %s; %d steps, global batch %d",
              ctx.world_size, ctx.tp_size, ctx.pp_size, ctx.dp_size, ctx.device.type,
              cfg.train.steps, cfg.train.global_batch_size)
    state = build_train_state(cfg, ctx)
    writer = MetricsWriter(output_dir, enabled=ctx.rank == 0, log_every=cfg.train.log_every,
                           total_steps=cfg.train.steps, tensorboard=cfg.run.tensorboard)
    seq_length = cfg.data.max_prefix_len + cfg.sip.suffix_len
    records = []
    try:
        for step in range(1, cfg.train.steps + 1):
            started = time.perf_counter()
            lr = state.optimizer.param_groups[0]["lr"]
            micro_batches = [b.to(ctx.device) for b in synthetic_micro_batches(
                seed=cfg.data.seed, step=step - 1, global_batch_size=cfg.train.global_batch_size,
                micro_batch_size=cfg.train.micro_batch_size, dp_rank=ctx.dp_rank, dp_size=ctx.dp_size,
                seq_length=seq_length, vocab_size=cfg.model.vocab_size)]
            result = train_step(state, ctx, micro_batches, forward_step=nll_forward_step,
                                seq_length=seq_length, micro_batch_size=cfg.train.micro_batch_size,
                                report_keys=("nll",))
            elapsed = time.perf_counter() - started
            nll_sum, num_tokens = result.reports["nll"]
            record = {
                "step": step,
                "loss": nll_sum / max(num_tokens, 1.0),
                "lr": lr,
                "grad_norm": result.grad_norm,
                "tokens": int(num_tokens),
                "tokens_per_s": num_tokens / elapsed,
                "step_time_s": elapsed,
                "update_applied": result.update_applied,
            }
            records.append(record)
            writer.write(record)
    finally:
        writer.close()
    return records
