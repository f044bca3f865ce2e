"""Reading and writing Hugging Face checkpoints without building the transformers model where
avoidable: safetensors and torch `.bin` files are read tensor by tensor; only GGUF (including
the embedded SmolLM2) goes through transformers, which dequantizes it. Written checkpoints are a
`config.json`, `model.safetensors` (or shards of it with an index) and the tokenizer, which is
what `trtllm-serve`, `vllm serve` and `transformers` load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from megatron_sip.embedded import EMBEDDED_NAME, embedded_gguf_path

_GGUF_SUFFIX = ".gguf"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_MAX_SHARD_BYTES = 5 * 1024**3


@dataclass
class HFCheckpoint:
    """An HF model's config (as a plain dict) and weights (name -> tensor)."""

    config: Dict[str, Any]
    state: Dict[str, torch.Tensor]
    source: str
    """Where it came from: `embedded`, a directory, or a .gguf file (also the tokenizer source)."""


def _resolve(source: str) -> Path:
    if source == EMBEDDED_NAME:
        return embedded_gguf_path()
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{source}: no such Hugging Face model directory or .gguf file")
    return path


def read_hf_checkpoint(source: str, *, dtype: Optional[torch.dtype] = None) -> HFCheckpoint:
    """Config and weights of `embedded`, a .gguf file, or a directory with config.json and
    *.safetensors (or pytorch_model*.bin). `dtype` casts floating tensors (None keeps them)."""
    path = _resolve(source)
    if path.is_file() and path.suffix == _GGUF_SUFFIX:
        config, state = _read_gguf(path)
    elif path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file}: missing (not a Hugging Face model directory)")
        config = json.loads(config_file.read_text())
        state = _read_weights(path)
    else:
        raise FileNotFoundError(f"{source}: expected a Hugging Face model directory or a .gguf file")
    if dtype is not None:
        state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in state.items()}
    return HFCheckpoint(config=config, state=state, source=source)


def load_hf_model(source: str) -> Any:
    """The transformers model itself, in fp32 on the CPU (the reference that `verify` compares to)."""
    from transformers import AutoModelForCausalLM

    path = _resolve(source)
    if path.is_file() and path.suffix == _GGUF_SUFFIX:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.eval()


def _read_gguf(path: Path) -> tuple:
    model = load_hf_model(str(path))
    config = model.config.to_dict()
    config["model_type"] = model.config.model_type
    return config, {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _read_weights(folder: Path) -> Dict[str, torch.Tensor]:
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        from safetensors.torch import load_file

        state: Dict[str, torch.Tensor] = {}
        for file in safetensors:
            state.update(load_file(str(file)))
        return state
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        state = {}
        for file in bins:
            state.update(torch.load(file, map_location="cpu", weights_only=True))
        return state
    raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")


def write_hf_checkpoint(folder: Path, config: Dict[str, Any], state: Dict[str, torch.Tensor], *,
                        tokenizer_source: Optional[str] = None, max_shard_bytes: int = _MAX_SHARD_BYTES) -> None:
    """config.json, safetensors (sharded with an index beyond `max_shard_bytes`), tokenizer files."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    dtypes = {str(t.dtype).replace("torch.", "") for t in state.values() if t.is_floating_point()}
    config = {**config, "dtype": dtypes.pop() if len(dtypes) == 1 else "float32"}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    shards = _plan_shards(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for number, shard in enumerate(shards, start=1):
            name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            weight_map.update({key: name for key in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / _SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    if tokenizer_source is not None:
        save_tokenizer(tokenizer_source, folder)


def _plan_shards(state: Dict[str, torch.Tensor], max_shard_bytes: int) -> list:
    shards, current, size = [], {}, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor.contiguous()
        size += nbytes
    shards.append(current)
    return shards


def has_tokenizer(source: str) -> bool:
    """Whether `source` carries a tokenizer (a GGUF file always does; a directory needs its files)."""
    path = _resolve(source)
    if path.is_file():
        return path.suffix == _GGUF_SUFFIX
    return any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def save_tokenizer(source: str, folder: Path) -> None:
    """The tokenizer of `embedded`, a .gguf file or an HF directory, saved as HF tokenizer files."""
    from transformers import AutoTokenizer

    path = _resolve(source)
    if path.is_file() and path.suffix == _GGUF_SUFFIX:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.save_pretrained(str(folder))
