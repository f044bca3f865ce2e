"""The `layers` decode engine: Megatron-Core's own layer modules, driven step by step with a KV
cache of our own.

Why not Megatron's static context (the `static` engine, kept as the fallback): its decode step
caches keys *before* rotary embeddings and, every step and every layer, re-applies them to the
whole cached key buffer, GQA-expands keys and values to all heads (`repeat_interleave`, a copy of
the cache) and runs the attention matmuls on strided views; it also keeps one sequence offset for
the batch, so prefixes of different lengths need one pass each. Profiled on the SmolLM2-135M
shape (one CPU thread, 8 rows) those copies made a decode step ~2x slower than transformers'.

What this engine does instead, with the same weights and the same modules:
- the cache holds keys *after* rotary, [B, groups, S, head_dim] per layer (batch-major, so each
  row's keys are contiguous for the attention matmul); a step writes one position per row;
- grouped-query attention without expansion: the queries of a group are viewed as
  [B, groups, heads_per_group, head_dim] and multiplied by that group's keys directly;
- every row has its own position, so prefixes of different lengths decode together in one batch
  (a row's attention is masked past its own position);
- the linear layers, norms, MLP (MoE too), embedding and output layer are Megatron's modules,
  called directly: tensor parallelism (column/row-parallel linears, the vocab-parallel output
  gathered over TP) works unchanged, and Transformer Engine's fused norm+linear modules fit the
  same call order (their separate norm is an IdentityOp).

`unsupported_reason` lists what this engine does not reproduce (then the generator falls back to
the static engine). Numerics: fp32 results match a full forward pass to ~1e-6 (tests).

Legend: B rows, G prefixes of one length, S cache positions, L prefix length, H hidden size,
n query heads, g KV groups, h heads per group, d head width, D rotary width, Vp padded vocabulary.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence

import torch

_SUPPORTED_POSITION_EMBEDDINGS = ("rope", "learned_absolute", "none")
# Config fields whose non-default values change the attention or the residual stream in ways
# this engine does not reproduce (each name: the value this engine needs).
_REQUIRED_CONFIG = {
    "multi_latent_attention": False,
    "apply_residual_connection_post_layernorm": False,
    "fp32_residual_connection": False,
    "attention_output_gate": False,
    "window_size": None,
    "no_rope_freq": None,
    "flash_decode": False,
    "context_parallel_size": 1,
    "mtp_num_layers": None,
}


def unsupported_reason(model: Any) -> Optional[str]:
    """Why this engine cannot decode `model` exactly, or None when it can."""
    config = model.config
    for name, required in _REQUIRED_CONFIG.items():
        value = getattr(config, name, required)
        if value != required and not (required is None and not value):
            return f"config.{name}={value!r}"
    if getattr(config, "softmax_type", "vanilla") != "vanilla":
        return f"config.softmax_type={config.softmax_type!r}"
    if model.position_embedding_type not in _SUPPORTED_POSITION_EMBEDDINGS:
        return f"position_embedding_type={model.position_embedding_type!r}"
    rotary = getattr(model, "rotary_pos_emb", None)
    if model.position_embedding_type == "rope" and type(rotary).__name__ != "RotaryEmbedding":
        return f"rotary embedding {type(rotary).__name__}"
    for layer in model.decoder.layers:
        attention = layer.self_attention
        if type(attention).__name__ != "SelfAttention":
            return f"attention module {type(attention).__name__}"
        if type(getattr(layer, "cross_attention", None)).__name__ not in ("IdentityOp", "NoneType"):
            return "cross attention"
    return None


def rotate(t_SBnd: torch.Tensor, cos_SB1D: torch.Tensor, sin_SB1D: torch.Tensor, *, interleaved: bool) -> torch.Tensor:
    """Rotary embedding as Megatron applies it (`rope_utils._apply_rotary_pos_emb_bshd`): the first
    D channels rotated, the rest passed through; halves [x1, x2] -> [-x2, x1], or interleaved
    pairs (x_even, x_odd) -> (-x_odd, x_even)."""
    rotary_width = cos_SB1D.shape[-1]
    t, passed = t_SBnd[..., :rotary_width], t_SBnd[..., rotary_width:]
    if interleaved:
        pairs = t.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    else:
        first, second = t.chunk(2, dim=-1)
        rotated = torch.cat((-second, first), dim=-1)
    out = t * cos_SB1D + rotated * sin_SB1D
    return out if passed.shape[-1] == 0 else torch.cat((out, passed), dim=-1)


class LayerCache:
    """Keys (rotary applied) and values of every local layer, [B, g, S, d] each, zero-filled so
    that masked positions contribute exactly 0 (an uninitialised NaN would survive 0 * NaN)."""

    def __init__(self, num_layers: int, *, num_rows: int, num_groups: int, max_positions: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (num_rows, num_groups, max_positions, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    def release(self) -> None:
        self.keys.clear()
        self.values.clear()


class LayerStage:
    """This rank's pipeline stage run through its layer modules (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        config = model.config
        self.layers = list(model.decoder.layers)
        attention = self.layers[0].self_attention if self.layers else None
        self.heads = attention.num_attention_heads_per_partition if attention else 0
        self.groups = attention.num_query_groups_per_partition if attention else 0
        self.head_dim = attention.hidden_size_per_attention_head if attention else 0
        self.softmax_scale = config.softmax_scale or 1.0 / math.sqrt(self.head_dim or 1)
        self.uses_rope = model.position_embedding_type == "rope"
        self.interleaved = bool(getattr(config, "rotary_interleaved", False))
        self.dtype = next(model.parameters()).dtype

    def new_cache(self, *, num_rows: int, max_positions: int, device: torch.device) -> LayerCache:
        return LayerCache(len(self.layers), num_rows=num_rows, num_groups=self.groups, max_positions=max_positions,
                          head_dim=self.head_dim, dtype=self.dtype, device=device)

    def rotary_tables(self, max_positions: int) -> Optional[torch.Tensor]:
        """[2, S, D] cos and sin of every position, computed once per pass (Megatron recomputes
        them in every layer)."""
        if not self.uses_rope:
            return None
        freqs_SD = self.model.rotary_pos_emb(max_positions)[:, 0, 0, :].float()
        return torch.stack((freqs_SD.cos(), freqs_SD.sin())).to(self.dtype)

    # -- the stage ---------------------------------------------------------------------------------
    def embed(self, tokens_BS: torch.Tensor, positions_BS: torch.Tensor) -> torch.Tensor:
        """[S, B, H] input of the first layer (first pipeline stage only)."""
        return self.model.embedding(input_ids=tokens_BS, position_ids=positions_BS)

    def logits(self, hidden_SBH: torch.Tensor) -> torch.Tensor:
        """[B, Vp] logits at the last position, gathered over tensor-parallel ranks (last stage only)."""
        hidden_1BH = hidden_SBH[-1:]
        final_norm = getattr(self.model.decoder, "final_layernorm", None)
        if final_norm is not None:
            hidden_1BH = final_norm(hidden_1BH)
        weight = (self.model.shared_embedding_or_output_weight()
                  if self.model.share_embeddings_and_output_weights else None)
        logits_1BVp, _ = self.model.output_layer(hidden_1BH, weight=weight, runtime_gather_output=True)
        return logits_1BVp[0]

    def prefill(self, hidden_LGH: torch.Tensor, cache: LayerCache, rows_Bi: torch.Tensor, *, num_samples: int,
                tables_2SD: Optional[torch.Tensor]) -> torch.Tensor:
        """G prefixes of one length L, causal attention; each prefix's keys and values are written
        to the cache rows of its K samples (`rows_Bi`, prefix-major), positions 0..L-1."""
        prefix_len = hidden_LGH.shape[0]
        rotary = None if tables_2SD is None else tables_2SD[:, :prefix_len, None, None, :]
        for index, layer in enumerate(self.layers):
            def attend(query_LGnd, key_LGgd, value_LGgd, index=index):
                keys_GgLd, values_GgLd = key_LGgd.permute(1, 2, 0, 3), value_LGgd.permute(1, 2, 0, 3)
                cache.keys[index][rows_Bi, :, :prefix_len] = keys_GgLd.repeat_interleave(num_samples, dim=0)
                cache.values[index][rows_Bi, :, :prefix_len] = values_GgLd.repeat_interleave(num_samples, dim=0)
                context_GnLd = torch.nn.functional.scaled_dot_product_attention(
                    query_LGnd.permute(1, 2, 0, 3), keys_GgLd, values_GgLd, is_causal=True,
                    scale=self.softmax_scale, enable_gqa=True)
                return context_GnLd.permute(2, 0, 1, 3).flatten(2)

            hidden_LGH = self._layer(layer, hidden_LGH, attend, rotary)
        return hidden_LGH

    def decode(self, hidden_1BH: torch.Tensor, cache: LayerCache, positions_B: torch.Tensor, *, num_positions: int,
               tables_2SD: Optional[torch.Tensor]) -> torch.Tensor:
        """One new token per row at its own position; attention over the first `num_positions`
        cache positions (a host-side bound on every row's position + 1), masked per row."""
        num_rows = positions_B.shape[0]
        rows_B = torch.arange(num_rows, device=positions_B.device)
        rotary = None if tables_2SD is None else tables_2SD[:, positions_B][:, None, :, None, :]
        # Additive mask [B, 1, 1, S]: 0 where the key position is at or before the row's own.
        visible_BS = torch.arange(num_positions, device=positions_B.device)[None, :] <= positions_B[:, None]
        mask_B11S = torch.zeros(visible_BS.shape, dtype=torch.float32, device=positions_B.device)
        mask_B11S = mask_B11S.masked_fill_(~visible_BS, float("-inf"))[:, None, None, :]
        for index, layer in enumerate(self.layers):
            def attend(query_1Bnd, key_1Bgd, value_1Bgd, index=index):
                keys_BgSd, values_BgSd = cache.keys[index], cache.values[index]
                keys_BgSd[rows_B, :, positions_B] = key_1Bgd[0]
                values_BgSd[rows_B, :, positions_B] = value_1Bgd[0]
                keys_BgSd, values_BgSd = keys_BgSd[:, :, :num_positions], values_BgSd[:, :, :num_positions]
                query_Bghd = query_1Bnd[0].view(num_rows, self.groups, -1, self.head_dim)
                scores_BghS = torch.matmul(query_Bghd, keys_BgSd.transpose(-1, -2)).float()
                probs_BghS = torch.softmax(scores_BghS * self.softmax_scale + mask_B11S, dim=-1)
                context_Bghd = torch.matmul(probs_BghS.to(values_BgSd.dtype), values_BgSd)
                return context_Bghd.reshape(1, num_rows, -1)

            hidden_1BH = self._layer(layer, hidden_1BH, attend, rotary)
        return hidden_1BH

    def _layer(self, layer: Any, hidden_SBH: torch.Tensor, attend, rotary: Optional[torch.Tensor]) -> torch.Tensor:
        """One pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x)); biases that
        Megatron's linears return separately (skip_bias_add) are added back here, as its
        bias-dropout-add does in eval mode."""
        attention = layer.self_attention
        query, key, value = attention.get_query_key_value_tensors(layer.input_layernorm(hidden_SBH), None)[:3]
        if rotary is not None:
            query = rotate(query, rotary[0], rotary[1], interleaved=self.interleaved)
            key = rotate(key, rotary[0], rotary[1], interleaved=self.interleaved)
        hidden_SBH = hidden_SBH + _with_bias(attention.linear_proj(attend(query, key, value)))
        return hidden_SBH + _with_bias(layer.mlp(layer.pre_mlp_layernorm(hidden_SBH)))


def _with_bias(output_and_bias: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    output, bias = output_and_bias[0], output_and_bias[1]
    return output if bias is None else output + bias


def rows_of(group_indices: List[int], num_samples: int, device: torch.device) -> torch.Tensor:
    """Cache rows of the K samples of each listed prefix (pass-local prefix indices), prefix-major."""
    starts = torch.tensor(group_indices, dtype=torch.int64, device=device) * num_samples
    return (starts[:, None] + torch.arange(num_samples, device=device)[None, :]).reshape(-1)
