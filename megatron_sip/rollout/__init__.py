"""Policy rollouts: K sampled continuations of N tokens per prefix, on Megatron-Core.

How this departs from a plain sampling loop (and from the paper, which does not say how it samples):
- the prefix is encoded once and its KV cache copied to its K samples (`mcore.expand_prefix_cache`);
- decoding drives Megatron-Core's `StaticInferenceContext` with our own loop (`mcore` says why);
- randomness is keyed by (seed, prefix id), not by the batch or the layout (`sampling`);
- pipeline stages generate together by send/recv, tensor-parallel ranks by sharing logits (`stages`);
- prefixes are grouped by length, one prefill + decode pass per length (`generator`).
See docs/rollouts.md for the API, the choices and their costs, and the benchmark.
"""

from megatron_sip.rollout.generator import RolloutBatch, RolloutGenerator, unwrap_model
from megatron_sip.rollout.sampling import SamplingParams, prefix_uniforms, sample_next

__all__ = ["RolloutBatch", "RolloutGenerator", "SamplingParams", "prefix_uniforms", "sample_next", "unwrap_model"]
