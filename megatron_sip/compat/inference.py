"""Which rollout engine runs, decided at run time from the device, the model and the request.

Engines (megatron_sip/rollout/passes.py):
- `layers`: Megatron-Core's layer modules driven with our own KV cache (rotary applied once,
  grouped-query attention without expansion, prefixes of any lengths in one batch). Runs on CPU and
  GPU, with either layer spec, any TP/PP layout, Megatron-Core 0.16 and 0.19 alike (it uses only
  module calls that both share). On CUDA with no pipeline split, its decode step is captured once
  per pass and replayed as a CUDA graph (one launch per step instead of ~20 kernels per layer);
- `static`: `GPTModel.forward` with `StaticInferenceContext`, the loop every earlier version ran.
  The fallback for models the `layers` engine does not reproduce (its `unsupported_reason`).

Megatron-Core's own CUDA-graph paths are not used: in 0.16 the static context refuses CUDA graphs
without flash decoding (flash-attn), and the dynamic engine (0.17+ API) encodes every request's
prompt separately, losing the shared prefix that SIP's K samples per prefix rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

ENGINES = ("auto", "layers", "static")


@dataclass(frozen=True)
class RolloutEngineChoice:
    """The engine a generator uses, and why."""

    name: str
    """`layers` or `static`."""
    cuda_graphs: bool
    """Replay the `layers` decode step as a CUDA graph (CUDA, no pipeline split)."""
    reason: str
    """One line for the log: why this engine."""


def choose_rollout_engine(*, requested: str, device: torch.device, unsupported: Optional[str],
                          pipeline_parallel_size: int, cuda_graphs: Optional[bool] = None) -> RolloutEngineChoice:
    """`requested`: `auto` (the fastest that reproduces the model), `layers` or `static`.
    `unsupported`: why the `layers` engine cannot run this model (None: it can).
    `cuda_graphs`: None = on wherever possible; False forces eager decoding."""
    if requested not in ENGINES:
        raise ValueError(f"rollout engine must be one of {', '.join(ENGINES)}, got {requested!r}")
    if requested == "static":
        return RolloutEngineChoice("static", False, "requested")
    if unsupported is not None:
        if requested == "layers":
            raise ValueError(f"the layers rollout engine cannot decode this model: {unsupported}")
        return RolloutEngineChoice("static", False, f"layers engine unsupported: {unsupported}")
    graphs_possible = device.type == "cuda" and pipeline_parallel_size == 1
    if cuda_graphs and not graphs_possible:
        raise ValueError("CUDA graphs for rollouts need a CUDA device and pipeline_model_parallel_size=1")
    use_graphs = graphs_possible if cuda_graphs is None else cuda_graphs
    return RolloutEngineChoice("layers", use_graphs, "CUDA graphs" if use_graphs else "eager")
