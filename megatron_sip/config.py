"""The run configuration: one typed schema, YAML files with `defaults`, Hydra-grammar overrides.

Composition order (later wins): schema defaults <- each file named in `defaults:` (recursively,
paths relative to the file) <- the file itself <- command-line overrides. Overrides follow Hydra:
`a.b=1` changes an existing key, `+a.new=2` adds one (only where the schema has a free-form
dict), `++a.b=1` sets whether or not it exists, `~a.b` drops a key (a schema field returns to its
default). Every problem is a `ConfigError` whose message starts with the key or file at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from megatron_sip.data.config import DataConfig
from megatron_sip.errors import ConfigError, check_choice, check_positive
from megatron_sip.evaluate.config import EvalConfig
from megatron_sip.judges.config import JudgeConfig, RewriterConfig
from megatron_sip.model.config import ModelConfig

OBJECTIVES = ("dpo", "rf_nll", "nll")
CANDIDATE_TYPES = ("suffix", "rewrite", "rollouts")
ON_JUDGE_FAILURE = ("skip", "nll_on_suffix", "nll_on_rewrite")
LR_DECAY_STYLES = ("cosine", "linear", "constant")


@dataclass
class SIPConfig:
    objective: str = "dpo"
    """dpo (best vs worst), rf_nll (NLL on the best) or nll (plain next-token baseline)."""
    suffix_len: int = 32
    """N: tokens per suffix, rewrite and rollout (the paper uses 128)."""
    candidates: List[str] = field(default_factory=lambda: ["suffix", "rewrite", "rollouts"])
    """Candidate types per prefix: any of suffix, rewrite, rollouts."""
    num_rollouts: int = 4
    """K: policy rollouts per prefix (the paper: 16 continued pretraining, 1 from scratch)."""
    temperature: float = 1.0
    """Rollout sampling temperature."""
    top_p: float = 1.0
    """Rollout nucleus."""
    top_k: int = 0
    """Rollout top-k; 0 = off."""
    dpo_beta: float = 0.1
    """DPO inverse temperature."""
    nll_weight: float = 0.0
    """Weight of an extra NLL term on the chosen candidate in dpo."""
    reference_refresh_steps: int = 0
    """Copy the policy into the DPO reference every this many steps; 0 = frozen initial policy."""
    on_judge_failure: str = "skip"
    """Groups with failed or all-tied judgments: skip, nll_on_suffix or nll_on_rewrite."""
    overlap_judging: bool = False
    """Judge step t+1's candidates while step t trains (rollouts one step stale)."""
    logprobs_impl: str = "fused"
    """Token log-probs: fused (megatron_sip.kernels, no [tokens, vocab] logits, loss positions
    only) or megatron (GPTModel's vocab-parallel cross-entropy over full logits)."""
    logprobs_backend: str = "auto"
    """Fused kernel engine: auto (Triton on GPU, torch on CPU), torch or triton."""
    reference_fp8: bool = False
    """Reference-model log-probs with the FP8 (e4m3) forward kernel (GPU; see docs/kernels.md)."""

    def __post_init__(self) -> None:
        check_choice("sip", self, "objective", OBJECTIVES)
        check_choice("sip", self, "on_judge_failure", ON_JUDGE_FAILURE)
        check_choice("sip", self, "logprobs_impl", ("fused", "megatron"))
        check_choice("sip", self, "logprobs_backend", ("auto", "torch", "triton"))
        check_positive("sip", self, "suffix_len", "temperature", "dpo_beta")
        for name in self.candidates:
            if name not in CANDIDATE_TYPES:
                raise ConfigError("sip.candidates", f"'{name}' is not one of {', '.join(CANDIDATE_TYPES)}")
        if self.num_rollouts < 0:
            raise ConfigError("sip.num_rollouts", f"must be >= 0, got {self.num_rollouts}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("sip.top_p", f"{self.top_p} is not in (0, 1]")


@dataclass
class TrainConfig:
    steps: int = 20
    """Optimizer steps."""
    micro_batch_size: int = 2
    """Sequences per micro-batch per data-parallel rank."""
    global_batch_size: int = 4
    """Sequences per step over all data-parallel ranks (multiple of micro_batch_size * DP)."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 1e-4
    """Learning rate at the end of the decay."""
    lr_warmup_steps: int = 2
    """Linear warm-up steps."""
    lr_decay_style: str = "cosine"
    """cosine, linear or constant after warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2."""
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 = off."""
    seed: int = 1234
    """Seed of initialisation, dropout and rollouts."""
    log_every: int = 1
    """Console line every this many steps (metrics.jsonl gets every step)."""
    save_every: int = 0
    """Checkpoint every this many steps; 0 = only at the end and on SIGTERM/SIGUSR1."""
    keep_last: int = 2
    """Checkpoints kept."""
    exit_interval: int = 0
    """Save a checkpoint and exit when the step is a multiple of this (Megatron's --exit-interval);
    0 = run to train.steps. Resume with `megatron-sip train --resume`."""
    max_consecutive_nonfinite: int = 5
    """Stop after this many NaN/inf losses in a row (each skips its update)."""

    def __post_init__(self) -> None:
        check_positive("train", self, "steps", "micro_batch_size", "global_batch_size", "lr", "log_every")
        check_choice("train", self, "lr_decay_style", LR_DECAY_STYLES)
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError("train.global_batch_size", f"{self.global_batch_size} is not a multiple "
                              f"of train.micro_batch_size={self.micro_batch_size}")
        if not 0 <= self.lr_warmup_steps < self.steps:
            raise ConfigError("train.lr_warmup_steps", f"{self.lr_warmup_steps} must be >= 0 and "
                              f"below train.steps={self.steps}")
        if self.min_lr > self.lr:
            raise ConfigError("train.min_lr", f"{self.min_lr} exceeds train.lr={self.lr}")

    @property
    def num_samples(self) -> int:
        """Samples the run trains on, over all data-parallel ranks."""
        return self.steps * self.global_batch_size


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    """Metrics, checkpoints and the resolved config go here."""
    name: str = "sip"
    """Run name (logs, TensorBoard)."""
    tensorboard: bool = False
    """Also write TensorBoard events under output_dir/tensorboard."""
    log_level: str = "INFO"
    """Console log level."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sip: SIPConfig = field(default_factory=SIPConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    rewriter: RewriterConfig = field(default_factory=RewriterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation (megatron-sip evaluate; see docs/evaluate.md)."""
    defaults: List[str] = field(default_factory=list)
    """Files this one inherits from (already merged; kept for the record)."""

    def __post_init__(self) -> None:
        if self.data.max_prefix_len + self.sip.suffix_len > self.model.seq_length:
            raise ConfigError("data.max_prefix_len", f"{self.data.max_prefix_len} + sip.suffix_len="
                              f"{self.sip.suffix_len} exceeds model.seq_length={self.model.seq_length}")


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> Config:
    """Compose, override and validate; the typed result or a ConfigError naming the culprit."""
    from megatron_sip.config_compose import compose

    return compose(Config, path, overrides)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what `megatron-sip config` prints and runs save)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
