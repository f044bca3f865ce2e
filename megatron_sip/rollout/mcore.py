"""The slice of Megatron-Core's inference API that rollouts use, across 0.16.x and 0.19.x.

Engine choice. Megatron-Core offers a dynamic engine (paged KV cache, continuous batching) and a
static one (`StaticInferenceContext`: one preallocated [S, B, groups, head_dim] key and value
buffer per layer, one sequence offset for the whole batch). Rollouts drive the *static context*
with their own loop and use neither engine's controller, because:
- the dynamic context needs flash-attn kernels, so it cannot run on CPU, where this project is
  developed and tested; the static context runs on CPU (gloo) and GPU alike;
- the engines' controllers encode each request's prompt separately, whereas SIP samples K
  continuations of the same prefix: encoding the prefix once and copying its cache K-fold
  (`expand_prefix_cache`) needs direct access to the buffers, which the static context exposes;
- the engines' and controllers' APIs were reworked in 0.17; `StaticInferenceContext`'s
  constructor and buffers are the same in 0.16.1 and 0.19.x.

The version differences of the forward call (the argument's name, 0.19's inference-mode flag) are
bridged in `megatron_sip.compat.versions` (`forward_kwargs`, `inference_scope`).

Legend: S sequence positions, B rows, G prefixes, K samples per prefix, L prefix length.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


def new_static_context(*, max_batch_size: int, max_sequence_length: int) -> Any:
    """A fresh static KV-cache context; its buffers are allocated lazily by each attention layer
    on the first forward pass (so on PP ranks only for the local layers)."""
    from megatron.core.inference.contexts.static_context import StaticInferenceContext

    return StaticInferenceContext(max_batch_size, max_sequence_length)


_SEQUENCE_PARALLEL_FLAGS = ("sequence_parallel", "scatter_to_sequence_parallel", "reduce_scatter_embeddings")


@contextlib.contextmanager
def sequence_parallel_off(model: Any) -> Iterator[None]:
    """Sequence parallelism (GPU only) splits the sequence over TP ranks, which a one-token decode
    step cannot be split into; Megatron's static engine refuses it too. Every module's flag (the
    ones Megatron's `set_model_to_sequence_parallel` toggles) is switched off for generation and
    restored to its own previous value after; the config object is shared with training."""
    config = model.config
    if not getattr(config, "sequence_parallel", False):
        yield
        return
    saved = [(module, name, getattr(module, name)) for module in model.modules()
             for name in _SEQUENCE_PARALLEL_FLAGS if isinstance(getattr(module, name, None), bool)]
    config.sequence_parallel = False
    for module, name, _ in saved:
        setattr(module, name, False)
    try:
        yield
    finally:
        config.sequence_parallel = True
        for module, name, value in saved:
            setattr(module, name, value)


def start_decoding(context: Any, *, sequence_len_offset: int) -> None:
    """Switch the context from prefill to one-token decode steps after `sequence_len_offset`
    cached positions."""
    context.sequence_len_offset = sequence_len_offset
    context.enable_decode_mode()


def advance(context: Any, num_positions: int) -> None:
    context.sequence_len_offset += num_positions


@torch.no_grad()
def expand_prefix_cache(context: Any, *, num_prefixes: int, num_samples: int, prefix_len: int) -> None:
    """Copy each encoded prefix's keys and values to the rows of its K samples, in place.

    The prefill wrote prefix g to batch row g of every layer's [S, B, groups, head_dim] buffer;
    afterwards rows g*K .. g*K+K-1 hold prefix g (prefix-major order). Prefixes are moved from the
    last to the first, so no source row is overwritten before it is read (row g only moves to rows
    >= g), and no buffer of B rows is allocated on top of the cache.
    """
    if num_samples == 1:
        return
    for key_SBgd, value_SBgd in context.key_value_memory_dict.values():
        for buffer in (key_SBgd, value_SBgd):
            for g in reversed(range(num_prefixes)):
                source = buffer[:prefix_len, g:g + 1]
                if g == 0:
                    source = source.clone()  # row 0 is also a destination
                buffer[:prefix_len, g * num_samples:(g + 1) * num_samples].copy_(
                    source.expand(-1, num_samples, *source.shape[2:]))


def release(context: Any) -> None:
    """Drop the KV buffers now rather than when the context is garbage-collected."""
    context.key_value_memory_dict.clear()
