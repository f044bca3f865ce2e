"""Hugging Face Llama checkpoints <-> Megatron checkpoints, and the loader the trainer calls.

A converted checkpoint is a directory:

    <dir>/                      Megatron-Core dist_checkpointing files: the model under the key
                                prefix `model.`, exactly as run checkpoints (run.output_dir/
                                checkpoints/step_N) store the policy, so either kind loads the same
                                way and reshards to any TP/PP layout at load time
    <dir>/model.yaml            the `model:` section (shape, padding, rope, ...): put it in a run
                                config's `defaults:` and set the parallel sizes there
    <dir>/hf_conversion.json    the HF config it came from, the padding (LlamaShape), the
                                tokenizer source: what `megatron-to-hf` needs to undo it

`load_megatron_weights(model_chunk, dir)` loads such a directory (or a run checkpoint) into one
model chunk on every rank; `load_full_state` puts full (TP=1) tensors into a chunk directly,
cutting each rank's TP shard with Megatron's own partition metadata and mapping global layer
numbers to this pipeline stage's. The tensor layouts and the zero padding are in hf_llama.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import torch

from megatron_sip.errors import InputError
from megatron_sip.logging_utils import get_logger
from megatron_sip.model.config import ModelConfig
from megatron_sip.model.hf_llama import (LlamaShape, hf_config_from_model, hf_to_megatron, llama_shape,
                                         megatron_to_hf, model_config_from_hf, shape_of_model)

_log = get_logger(__name__)
MODEL_YAML = "model.yaml"
METADATA_FILE = "hf_conversion.json"
MODEL_PREFIX = "model."
_EMBEDDING = "embedding.word_embeddings.weight"
_OUTPUT = "output_layer.weight"
_LAYER_RE = re.compile(r"^(.*?decoder\.layers\.)(\d+)(\..*)$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class ConversionMetadata:
    """What hf_conversion.json holds."""

    hf_config: Dict[str, Any]
    shape: LlamaShape
    tokenizer: Optional[str]
    """Where the tokenizer comes from (the HF source), for export; null = none recorded."""

    def write(self, folder: Path) -> None:
        data = {"hf_config": self.hf_config, "shape": self.shape.to_dict(), "tokenizer": self.tokenizer}
        (folder / METADATA_FILE).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")

    @classmethod
    def read(cls, folder: Path) -> Optional["ConversionMetadata"]:
        path = Path(folder) / METADATA_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(hf_config=data["hf_config"], shape=LlamaShape(**data["shape"]), tokenizer=data.get("tokenizer"))


def _named_parameters(model: Any) -> Iterator[Tuple[str, str, torch.nn.Parameter]]:
    """(local name, name in the unsplit model, parameter) of one model chunk."""
    layers = getattr(getattr(model, "decoder", None), "layers", [])
    offsets = {i: layer.layer_number - 1 for i, layer in enumerate(layers)}
    for name, param in model.named_parameters():
        match = _LAYER_RE.match(name)
        global_name = f"{match.group(1)}{offsets[int(match.group(2))]}{match.group(3)}" if match else name
        yield name, global_name, param


def shard_tensor(full: torch.Tensor, param: torch.nn.Parameter, *, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This TP rank's piece of a full tensor, cut as Megatron cuts it: along `partition_dim` in
    `partition_stride` interleaved blocks (fc1's [gate; up] has stride 2: each rank holds
    [its gate rows; its up rows])."""
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return full
    dim, stride = param.partition_dim, getattr(param, "partition_stride", 1)
    blocks = torch.split(full, full.shape[dim] // (stride * tp_size), dim=dim)
    return torch.cat(blocks[tp_rank::tp_size], dim=dim)


@torch.no_grad()
def load_full_state(model: Any, full: Mapping[str, torch.Tensor], *, tp_rank: int, tp_size: int) -> None:
    """Copy full (TP=1, global layer numbers) tensors into one model chunk's parameters."""
    for local_name, global_name, param in _named_parameters(model):
        # A tied output layer on the last pipeline stage is a copy of the input embedding.
        source = _EMBEDDING if global_name == _OUTPUT and _OUTPUT not in full else global_name
        if source not in full:
            raise InputError(f"converted weights have no '{source}' for parameter '{local_name}'")
        piece = shard_tensor(full[source], param, tp_rank=tp_rank, tp_size=tp_size)
        if piece.shape != param.shape:
            raise InputError(f"'{local_name}': converted shape {tuple(piece.shape)} != model shape "
                             f"{tuple(param.shape)} (TP rank {tp_rank} of {tp_size})")
        param.data.copy_(piece.to(param.dtype))


def full_state_from_model(model: Any) -> Dict[str, torch.Tensor]:
    """The full state dict of an unsplit model (TP=1, PP=1), parameters only."""
    from megatron.core import parallel_state

    if (parallel_state.get_tensor_model_parallel_world_size() > 1
            or parallel_state.get_pipeline_model_parallel_world_size() > 1):
        raise InputError("full_state_from_model needs an unsplit model (TP = PP = 1)")
    return {global_name: param.detach().cpu() for _, global_name, param in _named_parameters(model)}


def load_megatron_weights(model: Any, checkpoint: str | Path) -> None:
    """Load the model weights of a converted checkpoint or a run checkpoint into one model chunk
    (any TP/PP layout: dist_checkpointing reshards). Call it on every rank, before the optimizer
    is built (Megatron's mixed-precision optimizer copies the parameters when it is built)."""
    from megatron.core import dist_checkpointing

    checkpoint = Path(checkpoint)
    if not (checkpoint / "metadata.json").is_file():
        raise FileNotFoundError(f"{checkpoint}: not a Megatron dist_checkpointing directory (no metadata.json)")
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict(prefix=MODEL_PREFIX)}, str(checkpoint))
    state = {key[len(MODEL_PREFIX):]: value for key, value in loaded["model"].items()}
    model.load_state_dict(state)
    _log.info("loaded model weights from %s", checkpoint)


def save_megatron_checkpoint(model: Any, folder: Path, model_cfg: ModelConfig,
                             metadata: Optional[ConversionMetadata]) -> None:
    """dist_checkpointing files + model.yaml (+ hf_conversion.json) into a new, empty folder."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=False)
    if dist.is_initialized():
        dist.barrier()
    dist_checkpointing.save({"model": model.sharded_state_dict(prefix=MODEL_PREFIX)}, str(folder))
    if rank == 0:
        write_model_yaml(folder / MODEL_YAML, model_cfg)
        if metadata is not None:
            metadata.write(folder)


def write_model_yaml(path: Path, model_cfg: ModelConfig) -> None:
    from omegaconf import OmegaConf

    # The parallel layout belongs to the run, not to the weights (they reshard at load).
    portable = dataclasses.replace(model_cfg, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                                   transformer_overrides={})
    header = ("# The model this checkpoint holds (written by `megatron-sip convert`). Use it in a run\n"
              "# config's `defaults:` and choose the parallel sizes, dtype and seq_length there.\n")
    path.write_text(header + OmegaConf.to_yaml(OmegaConf.create({"model": dataclasses.asdict(portable)})))


def read_model_yaml(path: Path) -> ModelConfig:
    """The `model:` section of a YAML file, validated on its own (a model.yaml holds nothing else)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data.get("model"), dict):
        raise InputError(f"{path}: no `model:` section")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), data["model"]))
    except OmegaConfBaseException as exc:
        raise InputError(f"{path}: {str(exc).splitlines()[0]}") from exc


def _single_process_model(cfg: ModelConfig) -> Tuple[Any, ModelConfig]:
    """An unsplit GPTModel on this one process, without random initialisation (it is overwritten)."""
    from megatron_sip.model.build import build_gpt_model
    from megatron_sip.parallel import init_parallel, launch_env

    if launch_env().world_size != 1:
        raise InputError("conversion runs as one process (not under torchrun/srun with several ranks)")
    cfg = dataclasses.replace(cfg, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                              transformer_impl="local",
                              transformer_overrides={**cfg.transformer_overrides, "perform_initialization": False})
    init_parallel(cfg, seed=0)
    return build_gpt_model(cfg, pre_process=True, post_process=True), cfg


def convert_hf_to_megatron(source: str, output: Path, *, target_tp: int = 1, seq_length: Optional[int] = None,
                           dtype: str = "float32") -> ModelConfig:
    """HF Llama (`embedded`, a .gguf file or an HF directory) -> a converted checkpoint folder."""
    from megatron_sip.model.hf_io import has_tokenizer, read_hf_checkpoint
    from megatron_sip.parallel import destroy_parallel

    if output.exists():
        raise InputError(f"{output}: already exists; choose a new --output folder")
    checkpoint = read_hf_checkpoint(source, dtype=_DTYPES[dtype])
    shape = llama_shape(checkpoint.config, tensor_parallel_size=target_tp)
    cfg = model_config_from_hf(checkpoint.config, tensor_parallel_size=target_tp, seq_length=seq_length,
                               params_dtype=dtype)
    full = hf_to_megatron(checkpoint.state, cfg, shape)
    del checkpoint.state
    model, _ = _single_process_model(cfg)
    try:
        load_full_state(model, full, tp_rank=0, tp_size=1)
        tokenizer = source if has_tokenizer(source) else None
        save_megatron_checkpoint(model, output, cfg, ConversionMetadata(checkpoint.config, shape, tokenizer))
    finally:
        destroy_parallel()
    _log.info("converted %s -> %s (%d layers, %d heads in %d KV groups%s)", source, output, cfg.num_layers,
              cfg.num_attention_heads, cfg.num_query_groups,
              f", {shape.num_padded_groups} zero group(s) for TP={target_tp}" if shape.num_padded_groups else "")
    return cfg


def find_model_config(checkpoint: Path) -> ModelConfig:
    """model.yaml beside a converted checkpoint, or the run's config.yaml for a run checkpoint
    (run.output_dir/checkpoints/step_N)."""
    from megatron_sip.config import load_config

    if (checkpoint / MODEL_YAML).is_file():
        return read_model_yaml(checkpoint / MODEL_YAML)
    run_config = checkpoint.parent.parent / "config.yaml"
    if run_config.is_file():
        return load_config(run_config).model
    raise FileNotFoundError(f"{checkpoint}: no {MODEL_YAML} here and no run config.yaml two levels up; "
                            "pass --model-config")


def find_metadata(checkpoint: Path, cfg: ModelConfig, reference: Optional[Path]) -> Optional[ConversionMetadata]:
    """hf_conversion.json of `reference`, else of the checkpoint, else of the checkpoint the run
    was initialised from (`model.init_checkpoint`, when the schema has it)."""
    candidates = [reference, checkpoint, getattr(cfg, "init_checkpoint", None)]
    for folder in candidates:
        if folder and (meta := ConversionMetadata.read(Path(folder))) is not None:
            return meta
    return None


def convert_megatron_to_hf(checkpoint: Path, output: Path, *, model_cfg: Optional[ModelConfig] = None,
                           reference: Optional[Path] = None, tokenizer: Optional[str] = None,
                           dtype: str = "bfloat16") -> Dict[str, Any]:
    """A converted or run checkpoint -> an HF Llama directory that transformers, vLLM and
    trtllm-serve load. Returns the HF config written."""
    from megatron_sip.model.hf_io import write_hf_checkpoint
    from megatron_sip.parallel import destroy_parallel

    if output.exists() and any(output.iterdir()):
        raise InputError(f"{output}: exists and is not empty; choose a new --output folder")
    cfg = model_cfg or find_model_config(checkpoint)
    meta = find_metadata(checkpoint, cfg, reference)
    shape = meta.shape if meta is not None else shape_of_model(cfg)
    model, _ = _single_process_model(cfg)
    try:
        load_megatron_weights(model, checkpoint)
        full = full_state_from_model(model)
    finally:
        destroy_parallel()
    hf_state = {name: tensor.to(_DTYPES[dtype]) for name, tensor in megatron_to_hf(full, cfg, shape).items()}
    hf_config = hf_config_from_model(cfg, shape, base=meta.hf_config if meta else None)
    tokenizer = tokenizer or (meta.tokenizer if meta else None)
    write_hf_checkpoint(output, hf_config, hf_state, tokenizer_source=tokenizer)
    _log.info("exported %s -> %s (%s%s)", checkpoint, output, dtype,
              "" if tokenizer else "; no tokenizer recorded: pass --tokenizer to add one")
    return hf_config
