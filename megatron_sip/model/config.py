"""`model` section: the GPT policy, in Megatron-Core's own field names.

Fields named like `megatron.core.transformer.TransformerConfig` fields are passed to it as they
are; the rest (vocabulary, sequence length, layer-spec choice) go to `GPTModel`. Anything else
`TransformerConfig` accepts can be set through `model.transformer_overrides` (checked at build
time against the installed Megatron-Core).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from megatron_sip.errors import ConfigError, check_choice, check_positive

NORMALIZATIONS = ("RMSNorm", "LayerNorm")
ACTIVATIONS = ("silu", "gelu", "relu", "squared_relu")
POSITION_EMBEDDINGS = ("rope", "learned_absolute", "none")
TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")
DTYPES = ("float32", "bfloat16", "float16")
FP8_FORMATS = ("e4m3", "hybrid")


@dataclass
class ModelConfig:
    num_layers: int = 2
    """Transformer layers (split evenly over pipeline stages)."""
    hidden_size: int = 64
    """Model width."""
    ffn_hidden_size: Optional[int] = None
    """MLP width; null = 4 * hidden_size (Megatron's default)."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: Optional[int] = None
    """Key/value heads for GQA/MQA; null = num_attention_heads (plain multi-head attention)."""
    kv_channels: Optional[int] = None
    """Per-head width; null = hidden_size / num_attention_heads."""
    vocab_size: int = 49152
    """Vocabulary size before padding (the tokenizer's size)."""
    make_vocab_size_divisible_by: int = 128
    """The embedding is padded to a multiple of this; it must split evenly over TP ranks."""
    seq_length: int = 512
    """Longest sequence (prefix + suffix) in tokens; also the rotary table length."""
    normalization: str = "RMSNorm"
    """RMSNorm or LayerNorm."""
    activation: str = "silu"
    """MLP activation: silu, gelu, relu, squared_relu."""
    gated_linear_unit: bool = True
    """Gated MLP (SwiGLU with silu)."""
    position_embedding_type: str = "rope"
    """rope, learned_absolute or none."""
    rotary_base: int = 10000
    """Rotary base (theta)."""
    rotary_percent: float = 1.0
    """Share of each head's channels that is rotated."""
    rotary_interleaved: bool = False
    """Rotate interleaved pairs (false matches Hugging Face Llama weights)."""
    share_embeddings_and_output_weights: bool = True
    """Tie the output layer to the input embedding."""
    add_bias_linear: bool = False
    """Biases in linear layers (Llama has none)."""
    layernorm_epsilon: float = 1e-5
    """Normalization epsilon."""
    hidden_dropout: float = 0.0
    """Dropout after attention and MLP."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    init_method_std: float = 0.02
    """Std of the normal weight init."""
    params_dtype: str = "float32"
    """Parameter and compute dtype: float32, bfloat16 (mixed precision via Megatron's optimizer) or float16."""
    fp8: Optional[str] = None
    """Transformer Engine FP8 recipe format (e4m3 or hybrid); null = off. GPU with TE only."""
    transformer_impl: str = "auto"
    """Layer spec: local (pure torch), transformer_engine, or auto (TE when importable and on GPU)."""
    tensor_model_parallel_size: int = 1
    """Tensor-parallel size (TP)."""
    pipeline_model_parallel_size: int = 1
    """Pipeline-parallel size (PP)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (needs TP > 1 and Transformer Engine or Apex: GPU only)."""
    init_checkpoint: Optional[str] = None
    """Weights to start from: a `megatron-sip convert hf-to-megatron` folder or a run's
    checkpoints/step_N (any TP/PP layout); null = random init. --resume takes precedence."""
    transformer_overrides: Dict[str, Any] = field(default_factory=dict)
    """Extra `TransformerConfig` fields by name, e.g. +model.transformer_overrides.qk_layernorm=true."""

    def __post_init__(self) -> None:
        check_positive("model", self, "num_layers", "hidden_size", "num_attention_heads", "vocab_size",
                  "make_vocab_size_divisible_by", "seq_length", "tensor_model_parallel_size",
                  "pipeline_model_parallel_size")
        check_choice("model", self, "normalization", NORMALIZATIONS)
        check_choice("model", self, "activation", ACTIVATIONS)
        check_choice("model", self, "position_embedding_type", POSITION_EMBEDDINGS)
        check_choice("model", self, "transformer_impl", TRANSFORMER_IMPLS)
        check_choice("model", self, "params_dtype", DTYPES)
        if self.fp8 is not None:
            check_choice("model", self, "fp8", FP8_FORMATS)
        tp, pp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError("model.hidden_size", f"{self.hidden_size} is not divisible by "
                              f"model.num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % tp:
            raise ConfigError("model.tensor_model_parallel_size", f"{tp} does not divide "
                              f"model.num_attention_heads={self.num_attention_heads}")
        groups = self.num_query_groups
        if groups is not None:
            if groups <= 0 or self.num_attention_heads % groups:
                raise ConfigError("model.num_query_groups", f"{groups} must be positive and divide "
                                  f"model.num_attention_heads={self.num_attention_heads}")
            if groups % tp:
                raise ConfigError("model.tensor_model_parallel_size",
                                  f"{tp} does not divide model.num_query_groups={groups}")
        if self.padded_vocab_size % tp:
            raise ConfigError("model.tensor_model_parallel_size", f"{tp} does not divide the padded "
                              f"vocabulary {self.padded_vocab_size} (model.vocab_size={self.vocab_size}); "
                              "raise model.make_vocab_size_divisible_by")
        if self.num_layers % pp:
            raise ConfigError("model.pipeline_model_parallel_size",
                              f"{pp} does not divide model.num_layers={self.num_layers}")
        if self.sequence_parallel and tp == 1:
            raise ConfigError("model.sequence_parallel", "needs model.tensor_model_parallel_size > 1")
        if not 0.0 < self.rotary_percent <= 1.0:
            raise ConfigError("model.rotary_percent", f"{self.rotary_percent} is not in (0, 1]")

    @property
    def padded_vocab_size(self) -> int:
        """Vocabulary rounded up to make_vocab_size_divisible_by.

        Unlike Megatron, which pads to a multiple of (that x TP), the padded size does not depend
        on TP, so checkpoints reshard between layouts and every layout trains the same model.
        """
        multiple = self.make_vocab_size_divisible_by
        return -(-self.vocab_size // multiple) * multiple

