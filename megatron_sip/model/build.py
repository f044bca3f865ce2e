"""Build Megatron-Core's GPTModel from the `model` section.

The layer spec is Megatron's local (pure torch) one on CPU and its Transformer Engine one when TE
is importable on a GPU (`model.transformer_impl` forces either).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import torch
import torch.nn.functional as F

from megatron_sip.compat.device import transformer_device_fields
from megatron_sip.errors import ConfigError
from megatron_sip.logging_utils import get_logger
from megatron_sip.model.config import ModelConfig

_log = get_logger(__name__)
_ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
    "squared_relu": lambda x: torch.pow(F.relu(x), 2),
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def use_transformer_engine(cfg: ModelConfig) -> bool:
    """TE layers when asked for, or on `auto` when TE is importable and CUDA is present."""
    if cfg.transformer_impl == "local":
        return False
    have_te = importlib.util.find_spec("transformer_engine") is not None
    if cfg.transformer_impl == "transformer_engine":
        if not have_te:
            raise ConfigError("model.transformer_impl", "transformer_engine is not installed here; use local")
        return True
    return have_te and torch.cuda.is_available()


def transformer_config(cfg: ModelConfig) -> Any:
    """Megatron-Core `TransformerConfig` for this model section."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    dtype = _DTYPES[cfg.params_dtype]
    if cfg.fp8 is not None and not use_transformer_engine(cfg):
        raise ConfigError("model.fp8", "FP8 needs Transformer Engine layers (model.transformer_impl)")
    fields = dict(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.kv_channels,
        normalization=cfg.normalization,
        activation_func=_ACTIVATIONS[cfg.activation],
        gated_linear_unit=cfg.gated_linear_unit,
        add_bias_linear=cfg.add_bias_linear,
        layernorm_epsilon=cfg.layernorm_epsilon,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        init_method_std=cfg.init_method_std,
        rotary_interleaved=cfg.rotary_interleaved,
        tensor_model_parallel_size=cfg.tensor_model_parallel_size,
        pipeline_model_parallel_size=cfg.pipeline_model_parallel_size,
        sequence_parallel=cfg.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        fp8=cfg.fp8,
        # SIP losses are sums over tokens (NLL) or pairs (DPO); Megatron divides by the global
        # count in finalize_model_grads, so micro-batches of unequal size weigh correctly.
        calculate_per_token_loss=True,
        **transformer_device_fields(activation=cfg.activation, transformer_engine=use_transformer_engine(cfg)),
    )
    valid = {f.name for f in dataclasses.fields(TransformerConfig)}
    for key, value in cfg.transformer_overrides.items():
        if key not in valid:
            raise ConfigError(f"model.transformer_overrides.{key}", "not a field of Megatron-Core's TransformerConfig")
        fields[key] = value
    return TransformerConfig(**fields)


def layer_spec(cfg: ModelConfig) -> Any:
    from megatron.core.models.gpt import gpt_layer_specs

    if use_transformer_engine(cfg):
        _log.info("layer spec: Transformer Engine")
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(
            qk_layernorm=bool(cfg.transformer_overrides.get("qk_layernorm", False)))
    _log.info("layer spec: Megatron-Core local (torch) layers")
    return gpt_layer_specs.get_gpt_layer_local_spec(
        normalization=cfg.normalization, qk_layernorm=bool(cfg.transformer_overrides.get("qk_layernorm", False)))


def build_gpt_model(cfg: ModelConfig, *, pre_process: bool, post_process: bool, config: Any = None) -> Any:
    """One pipeline stage of the GPT policy (the whole model when PP = 1)."""
    from megatron.core.models.gpt import GPTModel

    model = GPTModel(
        config=config or transformer_config(cfg),
        transformer_layer_spec=layer_spec(cfg),
        vocab_size=cfg.padded_vocab_size,
        max_sequence_length=cfg.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=cfg.share_embeddings_and_output_weights,
        position_embedding_type=cfg.position_embedding_type,
        rotary_percent=cfg.rotary_percent,
        rotary_base=cfg.rotary_base,
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model


def unwrap_model(module: Any) -> Any:
    """The GPTModel inside Megatron's DDP / Float16Module wrappers (each keeps it as `.module`)."""
    while isinstance(getattr(module, "module", None), torch.nn.Module):
        module = module.module
    return module
