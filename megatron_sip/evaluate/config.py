"""`eval` settings: which checkpoints to compare, on how many held-out prefixes, and how the judge
votes. Until `Config` has an `eval` section, `megatron-sip evaluate` fills this from its flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_sip.errors import ConfigError, check_positive


@dataclass
class EvalConfig:
    checkpoint: Optional[str] = None
    """Run directory (its latest checkpoint) or checkpoint directory to evaluate; required."""
    baseline: Optional[str] = None
    """Run or checkpoint directory to compare against (the win rate); null = no pairwise comparison."""
    output_dir: Optional[str] = None
    """Where the report, generations and plots go; null = <run>/eval/<checkpoint name>, or
    <checkpoint>_eval beside a checkpoint that is not inside a run directory."""
    num_prefixes: int = 1000
    """M: the first M held-out samples of data.eval_paths (capped at one epoch; the paper: 1000)."""
    seeds: int = 8
    """Judge votes per judgment, sent as the request's n (the rules judge gives one deterministic vote)."""
    judge_temperature: float = 0.7
    """Judge sampling temperature during evaluation (the paper: 8 seeds at 0.7)."""
    temperature: float = 0.0
    """Decoding of the evaluated models: 0 = greedy (the paper); > 0 samples at that temperature,
    every model with the same random numbers per prefix, so differences between models are not
    sampling luck alone. For small models whose greedy text degenerates into repetition."""
    pairs: Optional[str] = None
    """JSONL of {prefix, chosen, rejected}: also report how often each model finds the chosen
    continuation more likely (evaluate/pairs.py); null = no pairs."""
    batch_size: int = 16
    """Prefixes per generation pass, per forward pass and per batch of judge requests."""

    def __post_init__(self) -> None:
        check_positive("eval", self, "num_prefixes", "seeds", "batch_size")
        if self.judge_temperature < 0:
            raise ConfigError("eval.judge_temperature", f"must be >= 0, got {self.judge_temperature}")
        if not self.temperature >= 0:
            raise ConfigError("eval.temperature", f"must be >= 0, got {self.temperature}")

    def require_checkpoint(self) -> str:
        """The checkpoint to evaluate, or a ConfigError saying how to name it."""
        if not self.checkpoint:
            raise ConfigError("eval.checkpoint", "name the run or checkpoint directory to evaluate (--checkpoint)")
        return self.checkpoint
