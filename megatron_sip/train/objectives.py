"""The per-objective step the loop runs: `nll` here; SIP (`dpo`, `rf_nll`) in megatron_sip.sip."""

from __future__ import annotations

from typing import Any, Dict, Protocol

from megatron_sip.config import Config
from megatron_sip.parallel import ParallelContext
from megatron_sip.train.batch import synthetic_micro_batches
from megatron_sip.train.setup import TrainState
from megatron_sip.train.step import StepOutcome, nll_forward_step, train_step


class ObjectiveStep(Protocol):
    def run(self, *, step: int, consumed_samples: int) -> StepOutcome: ...

    def checkpoint_modules(self) -> Dict[str, Any]:
        """Unwrapped model chunks to checkpoint, by name ("model", and "reference" for DPO)."""

    def state_dict(self) -> Dict[str, Any]: ...

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def build_step(cfg: Config, ctx: ParallelContext, state: TrainState) -> ObjectiveStep:
    if cfg.sip.objective == "nll":
        return NllStep(cfg, ctx, state)
    from megatron_sip.sip.step import SIPStep

    return SIPStep(cfg, ctx, state)


class NllStep:
    """Standard next-token pretraining (the baseline SIP is compared against)."""

    def __init__(self, cfg: Config, ctx: ParallelContext, state: TrainState) -> None:
        self.cfg, self.ctx, self.state = cfg, ctx, state
        self.seq_length = cfg.data.max_prefix_len + cfg.sip.suffix_len

    def run(self, *, step: int, consumed_samples: int) -> StepOutcome:
        cfg, ctx = self.cfg, self.ctx
        micro_batches = [b.to(ctx.device) for b in synthetic_micro_batches(
            seed=cfg.data.seed, step=step - 1, global_batch_size=cfg.train.global_batch_size,
            micro_batch_size=cfg.train.micro_batch_size, dp_rank=ctx.dp_rank, dp_size=ctx.dp_size,
            seq_length=self.seq_length, vocab_size=cfg.model.vocab_size)]
        result = train_step(self.state, ctx, micro_batches, forward_step=nll_forward_step,
                            seq_length=self.seq_length, micro_batch_size=cfg.train.micro_batch_size,
                            report_keys=("nll",), loss_key="nll")
        return StepOutcome(loss=result.loss, grad_norm=result.grad_norm, update_applied=result.update_applied,
                           samples=cfg.train.global_batch_size, tokens=int(result.reports["nll"][1]))

    def checkpoint_modules(self) -> Dict[str, Any]:
        return {"model": self.state.model[0].module}

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
