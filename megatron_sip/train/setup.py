"""Build what a training run holds: the policy's model chunk (DDP-wrapped), Megatron's optimizer
and its learning-rate schedule, wired to the pipeline schedule's hooks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Optional

from megatron_sip.config import Config, TrainConfig
from megatron_sip.model.build import build_gpt_model, transformer_config
from megatron_sip.model.config import ModelConfig
from megatron_sip.model.init import init_layout_invariant
from megatron_sip.parallel import ParallelContext

if TYPE_CHECKING:
    from megatron_sip.data.step_sampler import StepSampler


@dataclass
class TrainState:
    """Runtime objects of a run; the config stays a plain description."""

    model: List[Any]
    """Model chunks, one per virtual pipeline stage (one here), wrapped in Megatron DDP."""
    optimizer: Any
    scheduler: Any
    transformer_config: Any


def build_step_sampler(cfg: Config, ctx: ParallelContext, *, eod_id: Optional[int]) -> StepSampler:
    """The sampler of this rank over the samples the whole run trains on (every rank builds them)."""
    from megatron_sip.data.build import build_sip_dataset
    from megatron_sip.data.step_sampler import StepSampler

    source = build_sip_dataset(cfg.data, suffix_len=cfg.sip.suffix_len, vocab_size=cfg.model.vocab_size,
                               num_samples=cfg.train.num_samples, eod_id=eod_id)
    return StepSampler(source, global_batch_size=cfg.train.global_batch_size,
                       micro_batch_size=cfg.train.micro_batch_size, dp_rank=ctx.dp_rank, dp_size=ctx.dp_size)


def build_train_state(cfg: Config, ctx: ParallelContext) -> TrainState:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    tconfig = transformer_config(cfg.model)
    model = build_gpt_model(cfg.model, pre_process=ctx.is_first_stage, post_process=ctx.is_last_stage, config=tconfig)
    init_layout_invariant(model, cfg.model, seed=cfg.train.seed, tp_rank=ctx.tp_rank, tp_size=ctx.tp_size)
    if cfg.model.init_checkpoint:
        # Before the optimizer: Megatron's mixed-precision optimizer copies the parameters.
        from megatron_sip.model.convert_hf import load_megatron_weights

        load_megatron_weights(model, cfg.model.init_checkpoint)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=False)
    ddp_model = DistributedDataParallel(tconfig, ddp_config, model)
    optimizer = build_optimizer(cfg.train, cfg.model, [ddp_model])
    # Hooks the pipeline schedule calls: loss scaling (fp16/bf16), no-sync during accumulation,
    # and the grad all-reduce + division by the global token/pair count after the last micro-batch.
    tconfig.grad_scale_func = optimizer.scale_loss
    tconfig.no_sync_func = ddp_model.no_sync
    tconfig.finalize_model_grads_func = finalize_model_grads
    return TrainState([ddp_model], optimizer, build_scheduler(cfg.train, optimizer), tconfig)


def build_optimizer(train: TrainConfig, model: ModelConfig, model_chunks: List[Any]) -> Any:
    import torch
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    opt_config = OptimizerConfig(
        optimizer="adam",
        lr=train.lr,
        min_lr=train.min_lr,
        weight_decay=train.weight_decay,
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        clip_grad=train.clip_grad,
        bf16=model.params_dtype == "bfloat16",
        fp16=model.params_dtype == "float16",
        params_dtype={"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[model.params_dtype],
        use_distributed_optimizer=False,
    )
    return get_megatron_optimizer(opt_config, model_chunks)


def build_scheduler(train: TrainConfig, optimizer: Any) -> Any:
    """Warm-up then decay, in units of optimizer steps. `train_step` advances it before each
    update, so step t (from 1) runs at the schedule's value for t: warm-up reaches the peak at
    step `lr_warmup_steps` and no step runs at lr 0. Its counter equals the steps taken, which is
    what a checkpoint restores."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=train.lr,
        min_lr=train.min_lr,
        lr_warmup_steps=train.lr_warmup_steps,
        lr_decay_steps=train.steps,
        lr_decay_style=train.lr_decay_style,
        start_wd=train.weight_decay,
        end_wd=train.weight_decay,
        wd_incr_steps=train.steps,
        wd_incr_style="constant",
    )
