"""Layout-invariant weight initialisation.

Megatron-Core draws initial weights from one RNG stream per rank, so a model split over PP=2
starts from different weights than the same model on one rank. Here every weight matrix is drawn
from a generator seeded by (seed, its global name) in its full TP=1 shape, then cut to this rank's
shard with Megatron's own partition metadata (`partition_dim`, `partition_stride`). Any TP/PP
layout therefore starts from the same model, which makes parallel runs comparable step by step.
The distributions are Megatron's: N(0, std) and, for the output projections of attention and MLP,
N(0, std / sqrt(2 * num_layers)). Vectors (norm weights, biases) keep their constructed values.
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Any, Dict, Iterator, Tuple

import torch

from megatron_sip.model.config import ModelConfig

_LAYER_RE = re.compile(r"^(.*?decoder\.layers\.)(\d+)(\..*)$")
_SCALED_INIT_SUFFIXES = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")
_TIED_OUTPUT = "output_layer.weight"
_WORD_EMBEDDING = "embedding.word_embeddings.weight"


def global_parameter_names(model: torch.nn.Module) -> Iterator[Tuple[str, torch.nn.Parameter]]:
    """(name in the unsplit model, parameter): local layer indices become global ones."""
    layers = getattr(getattr(model, "decoder", None), "layers", [])
    offsets: Dict[int, int] = {i: layer.layer_number - 1 for i, layer in enumerate(layers)}
    for name, param in model.named_parameters():
        match = _LAYER_RE.match(name)
        if match:
            name = f"{match.group(1)}{offsets[int(match.group(2))]}{match.group(3)}"
        yield name, param


def _full_shape(param: torch.nn.Parameter, tp_size: int) -> Tuple[int, ...]:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp_size
    return tuple(shape)


def _shard(full: torch.Tensor, param: torch.nn.Parameter, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This rank's piece, cut exactly as Megatron's `_initialize_affine_weight_cpu` cuts it."""
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return full
    dim, stride = param.partition_dim, getattr(param, "partition_stride", 1)
    pieces = torch.split(full, param.shape[dim] // stride, dim=dim)
    return torch.cat(pieces[tp_rank::tp_size], dim=dim)


def _seed_for(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@torch.no_grad()
def init_layout_invariant(model: Any, cfg: ModelConfig, *, seed: int, tp_rank: int, tp_size: int) -> None:
    """Re-draw every weight matrix of one model chunk as described in the module docstring."""
    std = cfg.init_method_std
    scaled_std = std / math.sqrt(2.0 * cfg.num_layers)
    for name, param in global_parameter_names(model):
        if param.dim() < 2:
            continue
        # A tied output layer on the last stage must equal the first stage's embedding.
        seed_name = _WORD_EMBEDDING if name.endswith(_TIED_OUTPUT) and cfg.share_embeddings_and_output_weights else name
        generator = torch.Generator().manual_seed(_seed_for(seed, seed_name))
        full = torch.empty(_full_shape(param, tp_size), dtype=torch.float32)
        full.normal_(0.0, scaled_std if name.endswith(_SCALED_INIT_SUFFIXES) else std, generator=generator)
        param.data.copy_(_shard(full, param, tp_rank, tp_size).to(param.dtype))
