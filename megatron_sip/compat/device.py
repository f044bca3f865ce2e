"""Which of Megatron-Core's device-specific switches a model may turn on here.

Megatron-Core's `TransformerConfig` defaults several fused paths on; each needs CUDA and, for some,
Apex or Transformer Engine. On CPU they would fail at the first forward pass, so they are decided
here, from the device and the layer implementation, rather than at each call site.
"""

from __future__ import annotations

from typing import Dict

import torch


def transformer_device_fields(*, activation: str, transformer_engine: bool) -> Dict[str, bool]:
    """`TransformerConfig` fields that depend on the device: initialisation and kernel fusions.

    activation: the MLP's activation (`model.activation`); transformer_engine: TE layers are used.
    """
    on_gpu = torch.cuda.is_available()
    return dict(
        # Megatron allocates and initialises weights on the current CUDA device unless told not to.
        use_cpu_initialization=not on_gpu,
        # Megatron fuses bias + activation for SiLU (SwiGLU) and GeLU only, with CUDA kernels; it is
        # enabled with TE layers on a GPU only, the combination this project's GPU path uses.
        bias_activation_fusion=on_gpu and activation in ("silu", "gelu") and transformer_engine,
        # CUDA kernels; on CPU the unfused torch paths run.
        masked_softmax_fusion=on_gpu,
        persist_layer_norm=on_gpu,
        # Both need Apex or TE kernels (wgrad accumulation into main_grad, fused RoPE). Off on every
        # device, as they always were here: the unfused paths are the ones the tests check.
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
    )
