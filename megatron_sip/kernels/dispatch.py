"""fused_linear_logprobs: the public entry point; checks arguments and picks an engine.

Legend: T tokens (all leading dimensions flattened), H hidden size, V_local vocabulary rows of this
TP rank, V = V_local * TP size.
"""

from __future__ import annotations

import functools
import importlib
from typing import NamedTuple, Optional, Union

import torch
import torch.distributed as dist

from megatron_sip.kernels import checks, shards
from megatron_sip.kernels.autograd import LinearLogProbs, finish
from megatron_sip.kernels.torch_chunked import TorchChunked


class TokenLogProbs(NamedTuple):
    """What fused_linear_logprobs returns with return_entropy=True; both shaped like targets."""

    logprobs: torch.Tensor
    """log p(target), float32, differentiable in hidden and weight."""
    entropy: torch.Tensor
    """Entropy of the whole next-token distribution in nats, float32, without gradient."""


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    tp_group: Optional[dist.ProcessGroup] = None,
    temperature: float = 1.0,
    chunk_size: Optional[int] = None,
    fp8: bool = False,
    backend: str = "auto",
    return_entropy: bool = False,
) -> Union[torch.Tensor, TokenLogProbs]:
    """log p(targets) under softmax(hidden @ weight.T / temperature), without [T, V] logits.

    hidden [..., H] and targets [...] (global token ids) give float32 log-probs shaped like
    targets. weight [V_local, H] is this rank's contiguous vocabulary shard (rank r holds rows
    r*V_local ... (r+1)*V_local - 1, Megatron's layout); with tp_group the softmax statistics are
    all-reduced over the group, and in the backward grad_hidden is all-reduced too, so every rank
    gets the full gradient of hidden (the TP=1 value) and its own shard's gradient of weight.

    chunk_size: vocabulary rows per chunk (None: the engine's default); it bounds the working
    memory to a few [T, chunk_size] fp32 tiles (torch) or one [T, chunk_size] dz buffer (Triton).
    fp8: forward only, operands rounded to e4m3 with per-row scales (Triton on sm_89+; the torch
    backend emulates the rounding); raises ValueError if autograd would record the call.
    backend: "auto" (Triton for CUDA tensors when triton imports, else torch), "torch" or "triton".
    return_entropy: also return the entropy of each position's distribution (no gradient), as a
    TokenLogProbs(logprobs, entropy).
    """
    checks.check_options(temperature=temperature, chunk_size=chunk_size, backend=backend, tp_group=tp_group)
    checks.check_tensors(hidden, weight, targets)
    vocab_local = weight.shape[0]
    checks.check_target_range(targets, shards.vocab_global(vocab_local, tp_group))
    if fp8:
        checks.check_fp8_forward_only(hidden, weight)
    engine = _engine(backend, hidden, chunk_size, fp8_inputs=fp8)

    hidden_TH = hidden.reshape(-1, hidden.shape[-1])
    local_T = targets.reshape(-1).long() - shards.vocab_start(vocab_local, tp_group)
    # -1 marks targets held by another rank: they add no target logit and no one-hot gradient here.
    local_T = torch.where((local_T >= 0) & (local_T < vocab_local), local_T, torch.full_like(local_T, -1))

    if fp8:
        stats = engine.fp8_stats(hidden_TH, weight, local_T, temperature=temperature, with_entropy=return_entropy)
        logprobs_T, _, entropy_T = finish(stats, tp_group)
    else:
        logprobs_T, entropy_T = LinearLogProbs.apply(
            hidden_TH, weight, local_T, engine, tp_group, float(temperature), return_entropy
        )
    logprobs = logprobs_T.reshape(targets.shape)
    if not return_entropy:
        return logprobs
    return TokenLogProbs(logprobs, entropy_T.reshape(targets.shape))


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether `import triton` works here (cached)."""
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def _engine(backend: str, hidden: torch.Tensor, chunk_size: Optional[int], *, fp8_inputs: bool):
    use_triton = backend == "triton" or (backend == "auto" and hidden.is_cuda and triton_available())
    if not use_triton:
        return TorchChunked(chunk_size)
    if not triton_available():
        raise ValueError("backend: 'triton' needs the triton package (pip install triton); or use backend='torch'")
    # Imported here so that this package imports without triton (and CPU runs never compile kernels).
    from megatron_sip.kernels import triton_engine

    triton_engine.check_device(hidden, fp8_inputs=fp8_inputs)
    return triton_engine.TritonFused(chunk_size)
