"""Which checkpoint a user means, and loading it into a model built from the config.

`--checkpoint` and `--baseline` accept a run directory (its `checkpoints/latest`) or a
checkpoint directory (`<run>/checkpoints/step_XXXXXXXX`, or one copied anywhere). A checkpoint
inside a run directory brings the run's `metrics.jsonl` (training curves) and `config.yaml`,
whose model section must match the one evaluated (parallel layout aside: the distributed
checkpoint reshards to TP = PP = 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from megatron_sip.errors import ConfigError, InputError
from megatron_sip.model.config import ModelConfig
from megatron_sip.parallel import ParallelContext
from megatron_sip.train.checkpoint import CheckpointManager
from megatron_sip.train.plain_state import verify_checkpoint_files

_TRAINER_FILE = "trainer_state.pt"
_LAYOUT_FIELDS = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "sequence_parallel",
                  "init_checkpoint")
"""Model fields a checkpoint may differ in: the distributed checkpoint reshards between layouts,
and where a run's weights started from does not change its architecture."""


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint to evaluate and the run it belongs to."""

    label: str
    """checkpoint or baseline: the key of this model in the report."""
    checkpoint_dir: Path
    run_dir: Optional[Path]
    """The training run's output directory; None for a checkpoint outside one."""

    @property
    def metrics_file(self) -> Optional[Path]:
        if self.run_dir is None or not (self.run_dir / "metrics.jsonl").is_file():
            return None
        return self.run_dir / "metrics.jsonl"

    def default_output_dir(self) -> Path:
        if self.run_dir is not None:
            return self.run_dir / "eval" / self.checkpoint_dir.name
        return self.checkpoint_dir.with_name(self.checkpoint_dir.name + "_eval")


def resolve_checkpoint(spec: str, *, label: str, ctx: ParallelContext) -> ModelSource:
    """The checkpoint directory `spec` names (see the module docstring); InputError if none, or
    if a file of it holds more than plain data (checked before any model is built)."""
    source = _find_checkpoint(spec, label=label, ctx=ctx)
    verify_checkpoint_files(source.checkpoint_dir)
    return source


def _find_checkpoint(spec: str, *, label: str, ctx: ParallelContext) -> ModelSource:
    path = Path(spec).expanduser().resolve()
    if (path / "checkpoints").is_dir():
        latest = CheckpointManager(path / "checkpoints", ctx, keep_last=1).latest()
        if latest is None:
            raise InputError(f"--{label} {spec}: the run has no complete checkpoint under {path / 'checkpoints'}")
        return ModelSource(label, latest, path)
    if (path / _TRAINER_FILE).is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        return ModelSource(label, path, run_dir)
    raise InputError(f"--{label} {spec}: neither a run directory (with checkpoints/) nor a "
                     f"checkpoint directory (with {_TRAINER_FILE})")


def check_model_section(source: ModelSource, model_cfg: ModelConfig) -> None:
    """Raise ConfigError when the run that saved `source` used another model architecture."""
    from omegaconf import OmegaConf

    saved_file = None if source.run_dir is None else source.run_dir / "config.yaml"
    if saved_file is None or not saved_file.is_file():
        return
    saved = OmegaConf.to_container(OmegaConf.load(saved_file)).get("model", {})
    for name, value in dataclasses.asdict(model_cfg).items():
        if name in _LAYOUT_FIELDS or name not in saved or saved[name] == value:
            continue
        raise ConfigError(f"model.{name}", f"{value!r} here, but the {source.label} was trained with "
                          f"{saved[name]!r} ({saved_file}); evaluate with the run's model section")


def load_weights(source: ModelSource, model: Any, *, ctx: ParallelContext) -> int:
    """Load the checkpoint's policy ("model") into `model`; returns its training step."""
    trainer_state = CheckpointManager(source.checkpoint_dir.parent, ctx, keep_last=1).load(
        source.checkpoint_dir, modules={"model": model}, optimizer=None)
    return int(trainer_state["step"])
