"""Fused linear log-probs: log p(target) from the last hidden states and the output layer's weight
without building the [tokens, vocabulary] logits; torch (CPU and fallback) and Triton (GPU, BF16
and FP8-forward) engines, tensor-parallel over a vocabulary-sharded weight. See docs/kernels.md.
"""

from megatron_sip.kernels.dispatch import TokenLogProbs, fused_linear_logprobs, triton_available

__all__ = ["TokenLogProbs", "fused_linear_logprobs", "triton_available"]
