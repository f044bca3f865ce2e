"""Hugging Face Llama <-> Megatron-Core GPTModel: configuration and full (unsharded) weights.

Everything here works on whole tensors in the TP=1 layout with global layer numbers; cutting
them into TP/PP shards is `convert_hf.py`'s business. The layouts (measured: logits equal to
transformers' within 1.5e-4 in fp32, DESIGN.md):

- `linear_qkv` rows, per KV group g: [the q heads of g; k_g; v_g] (Megatron's interleaved GQA
  layout); HF keeps q_proj, k_proj, v_proj apart.
- `linear_fc1` = [gate; up] (Megatron cuts each half per TP rank: partition stride 2).
- Rotary: `rotary_interleaved=False` for weights as transformers loads them (also from GGUF,
  whose q/k permutation transformers undoes).
- Norms: `input_layernorm` / `pre_mlp_layernorm` are HF's `input_layernorm` /
  `post_attention_layernorm` (RMSNorm weights, no bias).

Padding (exact, and removed again on the way back):
- KV groups: TP must divide the number of KV groups (and heads). When it does not (SmolLM2: 9
  heads in 3 groups, TP=2) whole groups of zeros are appended: their q, k, v rows and their
  columns of the output projection are zero, so each padded head attends uniformly over zero
  values and adds exactly nothing. The padded model is a model of its own shape (here 12 heads
  in 4 groups, head width kept), recorded in `LlamaShape` so `megatron_to_hf` can drop it.
- Vocabulary: embedding (and an untied output layer) get zero rows up to
  `ModelConfig.padded_vocab_size` (a multiple of make_vocab_size_divisible_by, independent of TP).

Supported: `model_type` llama (RMSNorm, SwiGLU, rotary with the default rope type, GQA/MQA, tied
or untied embeddings, no biases). Anything else is a ValueError naming the HF config key.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional

import torch

from megatron_sip.errors import InputError
from megatron_sip.model.config import ModelConfig

_SUPPORTED_MODEL_TYPES = ("llama",)
_SUPPORTED_ROPE_TYPES = ("default", None)
_EMBEDDING = "embedding.word_embeddings.weight"
_OUTPUT = "output_layer.weight"
_FINAL_NORM = "decoder.final_layernorm.weight"


@dataclass(frozen=True)
class LlamaShape:
    """The HF model's attention shape and the padding added for Megatron (JSON-serialisable)."""

    num_heads: int
    """Query heads in the HF model."""
    num_kv_groups: int
    """Key/value heads in the HF model."""
    head_dim: int
    """Per-head width."""
    num_padded_groups: int
    """All-zero KV groups appended for tensor parallelism (0 = none)."""
    vocab_size: int
    """HF vocabulary (rows beyond it in the Megatron embedding are padding)."""

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_groups

    @property
    def megatron_groups(self) -> int:
        return self.num_kv_groups + self.num_padded_groups

    @property
    def megatron_heads(self) -> int:
        return self.megatron_groups * self.heads_per_group

    def to_dict(self) -> Dict[str, int]:
        return asdict(self)


def _get(hf_config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = hf_config.get(key, default)
    if value is None and default is None:
        raise InputError(f"Hugging Face config: '{key}' is missing")
    return value


def rope_theta(hf_config: Mapping[str, Any]) -> float:
    """Rope theta: transformers 5.x keeps it in rope_parameters, 4.x at the top level."""
    params = hf_config.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf_config.get("rope_theta"))
    if theta is None:
        raise InputError("Hugging Face config: no rope_theta (neither rope_parameters.rope_theta nor rope_theta)")
    return float(theta)


def _check_supported(hf_config: Mapping[str, Any]) -> None:
    model_type = hf_config.get("model_type")
    if model_type not in _SUPPORTED_MODEL_TYPES:
        raise InputError(f"Hugging Face config: model_type '{model_type}' is not supported "
                         f"(only {', '.join(_SUPPORTED_MODEL_TYPES)})")
    params = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type"))
    if rope_type not in _SUPPORTED_ROPE_TYPES:
        raise InputError(f"Hugging Face config: rope type '{rope_type}' is not supported (only the "
                         "default rope; Llama-3.1-style scaled rope needs model fields this schema lacks)")
    for key in ("attention_bias", "mlp_bias"):
        if hf_config.get(key):
            raise InputError(f"Hugging Face config: {key}=true is not supported (Llama has no biases)")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise InputError(f"Hugging Face config: hidden_act '{hf_config['hidden_act']}' is not supported (only silu)")


def llama_shape(hf_config: Mapping[str, Any], *, tensor_parallel_size: int = 1) -> LlamaShape:
    """The attention shape, with the fewest zero KV groups that make TP divide groups and heads."""
    _check_supported(hf_config)
    heads = int(_get(hf_config, "num_attention_heads"))
    groups = int(hf_config.get("num_key_value_heads") or heads)
    head_dim = int(hf_config.get("head_dim") or _get(hf_config, "hidden_size") // heads)
    if heads % groups:
        raise InputError(f"Hugging Face config: num_key_value_heads={groups} does not divide "
                         f"num_attention_heads={heads}")
    padded = 0
    while (groups + padded) % tensor_parallel_size or ((groups + padded) * (heads // groups)) % tensor_parallel_size:
        padded += 1
    return LlamaShape(num_heads=heads, num_kv_groups=groups, head_dim=head_dim, num_padded_groups=padded,
                      vocab_size=int(_get(hf_config, "vocab_size")))


def model_config_from_hf(hf_config: Mapping[str, Any], *, tensor_parallel_size: int = 1,
                         seq_length: Optional[int] = None, make_vocab_size_divisible_by: int = 128,
                         params_dtype: str = "float32") -> ModelConfig:
    """Our `model` section for an HF Llama config (padded for `tensor_parallel_size`; the
    parallel sizes themselves stay 1, to be set by the run)."""
    shape = llama_shape(hf_config, tensor_parallel_size=tensor_parallel_size)
    theta = rope_theta(hf_config)
    if theta != math.floor(theta):
        raise InputError(f"Hugging Face config: rope_theta={theta} is not an integer (model.rotary_base is)")
    return ModelConfig(
        num_layers=int(_get(hf_config, "num_hidden_layers")),
        hidden_size=int(_get(hf_config, "hidden_size")),
        ffn_hidden_size=int(_get(hf_config, "intermediate_size")),
        num_attention_heads=shape.megatron_heads,
        num_query_groups=shape.megatron_groups,
        kv_channels=shape.head_dim,
        vocab_size=shape.vocab_size,
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        seq_length=int(seq_length or _get(hf_config, "max_position_embeddings")),
        normalization="RMSNorm",
        activation="silu",
        gated_linear_unit=True,
        position_embedding_type="rope",
        rotary_base=int(theta),
        rotary_interleaved=False,
        share_embeddings_and_output_weights=bool(hf_config.get("tie_word_embeddings", False)),
        add_bias_linear=False,
        layernorm_epsilon=float(_get(hf_config, "rms_norm_eps")),
        init_method_std=float(hf_config.get("initializer_range", 0.02)),
        params_dtype=params_dtype,
    )


def hf_config_from_model(cfg: ModelConfig, shape: LlamaShape, *,
                         base: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """An HF LlamaConfig dict for a (possibly trained-from-scratch) model; `base` (the original HF
    config, when the model came from HF) keeps its token ids, rope details and other fields."""
    config = dict(base or {})
    config.update(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        vocab_size=shape.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size or 4 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_groups,
        head_dim=shape.head_dim,
        hidden_act="silu",
        rms_norm_eps=cfg.layernorm_epsilon,
        tie_word_embeddings=cfg.share_embeddings_and_output_weights,
        attention_bias=False,
        mlp_bias=False,
    )
    config.setdefault("max_position_embeddings", cfg.seq_length)
    config["rope_parameters"] = {**(config.get("rope_parameters") or {}), "rope_type": "default",
                                 "rope_theta": float(cfg.rotary_base)}
    config.pop("rope_theta", None)
    return config


def shape_of_model(cfg: ModelConfig) -> LlamaShape:
    """The shape of a model that did not come from HF (no padding)."""
    groups = cfg.num_query_groups or cfg.num_attention_heads
    return LlamaShape(num_heads=cfg.num_attention_heads, num_kv_groups=groups,
                      head_dim=cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads,
                      num_padded_groups=0, vocab_size=cfg.vocab_size)


def _pad_rows(tensor: torch.Tensor, num_rows: int) -> torch.Tensor:
    if tensor.shape[0] == num_rows:
        return tensor
    padding = tensor.new_zeros((num_rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, padding])


def _layer(hf: Mapping[str, torch.Tensor], index: int, name: str) -> torch.Tensor:
    key = f"model.layers.{index}.{name}"
    if key not in hf:
        raise InputError(f"Hugging Face weights: '{key}' is missing")
    return hf[key]


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: LlamaShape) -> torch.Tensor:
    """[q; k; v] of HF -> Megatron's per-group rows, zero groups appended."""
    d, per = shape.head_dim, shape.heads_per_group
    hidden = q.shape[1]
    q_g = q.reshape(shape.num_kv_groups, per * d, hidden)
    k_g = k.reshape(shape.num_kv_groups, d, hidden)
    v_g = v.reshape(shape.num_kv_groups, d, hidden)
    fused = torch.cat([q_g, k_g, v_g], dim=1)
    fused = _pad_rows(fused, shape.megatron_groups)
    return fused.reshape(-1, hidden)


def _split_qkv(qkv: torch.Tensor, shape: LlamaShape) -> tuple:
    d, per = shape.head_dim, shape.heads_per_group
    grouped = qkv.reshape(shape.megatron_groups, (per + 2) * d, -1)[: shape.num_kv_groups]
    q, k, v = torch.split(grouped, [per * d, d, d], dim=1)
    hidden = qkv.shape[1]
    return q.reshape(-1, hidden), k.reshape(-1, hidden), v.reshape(-1, hidden)


def _pad_proj(o_proj: torch.Tensor, shape: LlamaShape) -> torch.Tensor:
    """Output projection [hidden, heads*d]: zero columns for the padded groups' heads."""
    extra = shape.num_padded_groups * shape.heads_per_group * shape.head_dim
    if not extra:
        return o_proj
    return torch.cat([o_proj, o_proj.new_zeros(o_proj.shape[0], extra)], dim=1)


def hf_to_megatron(hf: Mapping[str, torch.Tensor], cfg: ModelConfig, shape: LlamaShape) -> Dict[str, torch.Tensor]:
    """HF Llama weights -> the full GPTModel state dict (global layer numbers, TP=1 layout)."""
    padded_vocab = cfg.padded_vocab_size
    out: Dict[str, torch.Tensor] = {_EMBEDDING: _pad_rows(hf["model.embed_tokens.weight"], padded_vocab)}
    for i in range(cfg.num_layers):
        prefix = f"decoder.layers.{i}."
        out[prefix + "input_layernorm.weight"] = _layer(hf, i, "input_layernorm.weight")
        out[prefix + "self_attention.linear_qkv.weight"] = _fuse_qkv(
            _layer(hf, i, "self_attn.q_proj.weight"), _layer(hf, i, "self_attn.k_proj.weight"),
            _layer(hf, i, "self_attn.v_proj.weight"), shape)
        out[prefix + "self_attention.linear_proj.weight"] = _pad_proj(_layer(hf, i, "self_attn.o_proj.weight"), shape)
        out[prefix + "pre_mlp_layernorm.weight"] = _layer(hf, i, "post_attention_layernorm.weight")
        out[prefix + "mlp.linear_fc1.weight"] = torch.cat(
            [_layer(hf, i, "mlp.gate_proj.weight"), _layer(hf, i, "mlp.up_proj.weight")])
        out[prefix + "mlp.linear_fc2.weight"] = _layer(hf, i, "mlp.down_proj.weight")
    out[_FINAL_NORM] = hf["model.norm.weight"]
    if not cfg.share_embeddings_and_output_weights:
        if "lm_head.weight" not in hf:
            raise InputError("Hugging Face weights: 'lm_head.weight' is missing (tie_word_embeddings is false)")
        out[_OUTPUT] = _pad_rows(hf["lm_head.weight"], padded_vocab)
    return out


def megatron_to_hf(state: Mapping[str, torch.Tensor], cfg: ModelConfig, shape: LlamaShape) -> Dict[str, torch.Tensor]:
    """The full GPTModel state dict -> HF Llama weights (padding dropped)."""
    vocab = shape.vocab_size
    q_width = shape.num_heads * shape.head_dim
    hf: Dict[str, torch.Tensor] = {"model.embed_tokens.weight": state[_EMBEDDING][:vocab]}
    for i in range(cfg.num_layers):
        prefix, layer = f"decoder.layers.{i}.", f"model.layers.{i}."
        q, k, v = _split_qkv(state[prefix + "self_attention.linear_qkv.weight"], shape)
        gate, up = torch.chunk(state[prefix + "mlp.linear_fc1.weight"], 2, dim=0)
        hf.update({
            layer + "input_layernorm.weight": state[prefix + "input_layernorm.weight"],
            layer + "self_attn.q_proj.weight": q,
            layer + "self_attn.k_proj.weight": k,
            layer + "self_attn.v_proj.weight": v,
            layer + "self_attn.o_proj.weight": state[prefix + "self_attention.linear_proj.weight"][:, :q_width],
            layer + "post_attention_layernorm.weight": state[prefix + "pre_mlp_layernorm.weight"],
            layer + "mlp.gate_proj.weight": gate,
            layer + "mlp.up_proj.weight": up,
            layer + "mlp.down_proj.weight": state[prefix + "mlp.linear_fc2.weight"],
        })
    hf["model.norm.weight"] = state[_FINAL_NORM]
    if not cfg.share_embeddings_and_output_weights:
        hf["lm_head.weight"] = state[_OUTPUT][:vocab]
    return {name: tensor.contiguous() for name, tensor in hf.items()}
