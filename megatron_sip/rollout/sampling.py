"""Next-token sampling from full-vocabulary logits: temperature, top-k, top-p, greedy.

Randomness comes from uniforms drawn up front, one per (sample, new token), from a CPU
`torch.Generator` seeded by (seed, prefix id) (`prefix_uniforms`). A token is drawn by inverting
the CDF of the (filtered, renormalised) distribution at its uniform. So a prefix's rollouts depend
only on the policy, the seed and the prefix id: not on which other prefixes share the batch, on
the TP/PP layout, or on the device; and every TP rank, holding the same gathered logits and the
same uniforms, draws the same tokens without a broadcast.

Legend: B rows (prefix x sample), V vocabulary entries, Vp the model's padded vocabulary,
K samples per prefix, N new tokens per sample, C blocks of the vocabulary, b tokens per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn from the policy's distribution."""

    temperature: float = 1.0
    """Logits are divided by this; 0 = greedy (argmax, log-prob 0 under the sampling rule)."""
    top_p: float = 1.0
    """Keep the smallest set of most likely tokens whose mass reaches this; 1 = off."""
    top_k: int = 0
    """Keep the k most likely tokens (ties at the k-th value kept too); 0 = off."""

    def __post_init__(self) -> None:
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class SampledTokens:
    """One decoding step for every row."""

    tokens_B: torch.Tensor
    logprobs_sampling_B: torch.Tensor
    """log q(token) under the distribution actually sampled from (temperature, top-k, top-p)."""
    logprobs_model_B: torch.Tensor
    """log p(token) under the raw model: softmax over its whole padded vocabulary, temperature 1,
    as the training forward pass computes it."""


def _splitmix64(value: int) -> int:
    """One step of SplitMix64: decorrelates nearby (seed, id) pairs before seeding mt19937."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def prefix_seed(seed: int, prefix_id: int) -> int:
    """The generator seed of one prefix's samples (stable across runs, platforms and layouts)."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (prefix_id & _MASK64)) >> 1


def prefix_uniforms(seed: int, prefix_id: int, num_samples: int, max_new_tokens: int) -> torch.Tensor:
    """[K, N] float64 uniforms in [0, 1) for one prefix, drawn on the CPU.

    Drawn on the CPU so that GPU and CPU runs (and any number of ranks) see the same numbers;
    K x N values per prefix are negligible next to one forward pass.
    """
    generator = torch.Generator(device="cpu").manual_seed(prefix_seed(seed, prefix_id))
    return torch.rand(num_samples, max_new_tokens, generator=generator, dtype=torch.float64, device="cpu")


def sampling_probs(logits_BV: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities of the sampling distribution, exactly 0 outside the kept set (float32)."""
    scaled_BV = logits_BV.float()
    if params.temperature != 1.0:
        scaled_BV = scaled_BV / params.temperature
    if params.top_k and params.top_k < scaled_BV.shape[-1]:
        kth_B1 = torch.topk(scaled_BV, params.top_k, dim=-1).values[..., -1:]
        scaled_BV = scaled_BV.masked_fill(scaled_BV < kth_B1, float("-inf"))
    probs_BV = torch.softmax(scaled_BV, dim=-1)
    if params.top_p < 1.0:
        probs_BV = _nucleus(probs_BV, params.top_p)
    return probs_BV


def sampling_logprobs(logits_BV: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Log of `sampling_probs`: -inf outside the kept set."""
    return sampling_probs(logits_BV, params).log()


def _nucleus(probs_BV: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens until their mass reaches `top_p` (the token that crosses the
    threshold is kept, so the set is never empty), then renormalise."""
    sorted_BV, order_BV = torch.sort(probs_BV, dim=-1, descending=True)
    # Mass strictly before each token (an exclusive cumsum, not cumsum - p, which rounds below
    # top_p at exact ties): a token is dropped when that mass already reaches top_p.
    cumulative_BV = torch.cumsum(sorted_BV, dim=-1)
    mass_before_BV = torch.cat([torch.zeros_like(cumulative_BV[..., :1]), cumulative_BV[..., :-1]], dim=-1)
    drop_BV = torch.zeros_like(mass_before_BV, dtype=torch.bool).scatter(-1, order_BV, mass_before_BV >= top_p)
    kept_BV = probs_BV.masked_fill(drop_BV, 0.0)
    return kept_BV / kept_BV.sum(dim=-1, keepdim=True)


def invert_cdf(probs_BV: torch.Tensor, uniforms_B: torch.Tensor, *, block_size: int = 256) -> torch.Tensor:
    """The token whose CDF interval contains each row's uniform (inverse-transform sampling).

    Two levels, so that no running sum over the whole vocabulary is needed: the mass of each block
    of `block_size` tokens (a float32 pairwise sum, relative error ~1e-7), a float64 CDF over the
    blocks to find the block, then a float64 CDF inside that block, rescaled to the block's mass.
    A float32 running sum over ~1e5 entries would drift by up to ~1e-3 and bias the tail; a
    float64 one costs a full-size copy and a sequential scan per step. Tokens of probability 0
    have empty intervals and are never drawn (the in-block target stays below the block total).
    """
    num_rows, vocab = probs_BV.shape
    num_blocks = -(-vocab // block_size)
    if num_blocks * block_size != vocab:
        probs_BV = torch.nn.functional.pad(probs_BV, (0, num_blocks * block_size - vocab))
    probs_BCb = probs_BV.view(num_rows, num_blocks, block_size)
    cdf_BC = torch.cumsum(probs_BCb.sum(-1).double(), dim=-1)
    target_B1 = uniforms_B.to(cdf_BC.device, torch.float64)[:, None] * cdf_BC[:, -1:]
    block_B1 = torch.searchsorted(cdf_BC, target_B1, right=True).clamp_(max=num_blocks - 1)
    upper_B1 = cdf_BC.gather(-1, block_B1)
    lower_B1 = torch.where(block_B1 > 0, cdf_BC.gather(-1, (block_B1 - 1).clamp(min=0)), 0.0)
    # Where in its block the target lies, as a fraction in [0, 1) of the block's mass.
    fraction_B1 = ((target_B1 - lower_B1) / (upper_B1 - lower_B1).clamp(min=torch.finfo(torch.float64).tiny))
    fraction_B1 = fraction_B1.clamp_(0.0, 1.0 - torch.finfo(torch.float64).eps)
    rows_B = torch.arange(num_rows, device=probs_BV.device)
    inner_cdf_Bb = torch.cumsum(probs_BCb[rows_B, block_B1[:, 0]].double(), dim=-1)
    inner_B1 = torch.searchsorted(inner_cdf_Bb, fraction_B1 * inner_cdf_Bb[:, -1:], right=True)
    return (block_B1 * block_size + inner_B1.clamp_(max=block_size - 1)).squeeze(-1).clamp_(max=vocab - 1)


def sample_next(logits_BVp: torch.Tensor, uniforms_B: torch.Tensor, params: SamplingParams, *,
                vocab_size: int) -> SampledTokens:
    """Draw one token per row from the first `vocab_size` logits (the padding entries of the
    embedding are never drawn) and report both log-probabilities of the drawn token."""
    logits_BV = logits_BVp[:, :vocab_size]
    if params.greedy:
        tokens_B = logits_BV.argmax(dim=-1)
        logprobs_sampling_B = torch.zeros(tokens_B.shape, dtype=torch.float32, device=tokens_B.device)
    else:
        probs_BV = sampling_probs(logits_BV, params)
        tokens_B = invert_cdf(probs_BV, uniforms_B)
        logprobs_sampling_B = probs_BV.gather(-1, tokens_B[:, None]).squeeze(-1).log()
        if _samples_the_model(params, logits_BVp.shape[-1], vocab_size):
            return SampledTokens(tokens_B, logprobs_sampling_B, logprobs_sampling_B)
    logprobs_model_BVp = torch.log_softmax(logits_BVp.float(), dim=-1)
    return SampledTokens(tokens_B, logprobs_sampling_B, logprobs_model_BVp.gather(-1, tokens_B[:, None]).squeeze(-1))


def _samples_the_model(params: SamplingParams, padded_vocab: int, vocab_size: int) -> bool:
    """Whether the sampling distribution is the raw model's (then its log-probs are reused)."""
    return (params.temperature == 1.0 and params.top_k == 0 and params.top_p == 1.0
            and padded_vocab == vocab_size)
