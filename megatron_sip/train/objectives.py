"""The per-objective step the loop runs: `nll` here; SIP (`dpo`, `rf_nll`) in megatron_sip.sip
(the loop picks one: `megatron_sip.train.loop.build_step`)."""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, Optional, Protocol

from megatron_sip.config import Config
from megatron_sip.data.config import DataConfig
from megatron_sip.model.logprob_head import logprob_head
from megatron_sip.parallel import ParallelContext
from megatron_sip.train.batch import TokenBatch
from megatron_sip.train.setup import TrainState, build_step_sampler
from megatron_sip.train.step import StepOutcome, nll_forward_step, train_step


class ObjectiveStep(Protocol):
    def run(self, *, step: int, consumed_samples: int) -> StepOutcome: ...

    def checkpoint_modules(self) -> Dict[str, Any]:
        """Unwrapped model chunks to checkpoint, by name ("model", and "reference" for DPO)."""

    def state_dict(self) -> Dict[str, Any]:
        """This rank's state to checkpoint (saved per rank)."""

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore `state_dict()`; {} when the checkpoint was saved with another world size."""

    def close(self) -> None: ...


class NllStep:
    """Standard next-token pretraining on the same samples SIP sees (prefix + original suffix,
    loss on every real token): the baseline SIP is compared against."""

    def __init__(self, cfg: Config, ctx: ParallelContext, state: TrainState) -> None:
        self.cfg, self.ctx, self.state = cfg, ctx, state
        self.seq_length = cfg.data.max_prefix_len + cfg.sip.suffix_len
        self.eod_id = _eod_id(cfg.data)
        self.sampler = build_step_sampler(cfg, ctx, eod_id=self.eod_id)
        self.head = logprob_head(cfg.sip, tp_group=ctx.tp_group)

    def run(self, *, step: int, consumed_samples: int) -> StepOutcome:
        from megatron_sip.data.collate import collate_sip

        cfg, ctx = self.cfg, self.ctx
        _, samples = self.sampler.samples(consumed_samples)
        mbs = cfg.train.micro_batch_size
        micro_batches = []
        for first in range(0, len(samples), mbs):
            batch = collate_sip(samples[first:first + mbs], pad_id=self.eod_id or 0, seq_length=self.seq_length)
            micro_batches.append(TokenBatch(batch.suffix.tokens_BS, batch.suffix.labels_BS,
                                            batch.lm_loss_mask_BS).to(ctx.device))
        result = train_step(self.state, ctx, micro_batches, forward_step=partial(nll_forward_step, self.head),
                            seq_length=self.seq_length, micro_batch_size=cfg.train.micro_batch_size,
                            report_keys=("nll",), loss_key="nll")
        return StepOutcome(loss=result.loss, grad_norm=result.grad_norm, update_applied=result.update_applied,
                           samples=cfg.train.global_batch_size, tokens=int(result.reports["nll"][1]),
                           trained=result.trained)

    def checkpoint_modules(self) -> Dict[str, Any]:
        return {"model": self.state.model[0].module}

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _eod_id(data: DataConfig) -> Optional[int]:
    """The corpus's end-of-document id; synthetic documents (no data.paths) have none."""
    if not data.paths:
        return None
    from megatron_sip.data.codec import load_codec

    return load_codec(data.tokenizer, data.eod_token).eod_id

