"""The unfused float64 reference of fused_linear_logprobs, and random inputs, for tests and benchmarks.

Legend: T tokens, H hidden size, V vocabulary. It builds the full [T, V] logits: small sizes only.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class Reference(NamedTuple):
    """log p(y), entropy, and the gradients of sum_t g_t log p(y_t), all float64."""

    logprobs_T: torch.Tensor
    entropy_T: torch.Tensor
    grad_hidden_TH: torch.Tensor
    grad_weight_VH: torch.Tensor


class RandomInputs(NamedTuple):
    hidden_TH: torch.Tensor
    weight_VH: torch.Tensor
    targets_T: torch.Tensor
    grad_T: torch.Tensor


def random_inputs(
    num_tokens: int,
    vocab: int,
    hidden: int,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    logit_std: float = 3.0,
    device: Optional[torch.device] = None,
) -> RandomInputs:
    """hidden ~ N(0, 1) (post-norm scale), weight scaled so logits spread by about `logit_std`.

    Targets are uniform ids, the upstream gradient is N(0, 1); generated on CPU (the same numbers
    on every device and rank for a seed), then moved.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden_TH = torch.randn(num_tokens, hidden, generator=gen)
    weight_VH = torch.randn(vocab, hidden, generator=gen) * (logit_std / hidden**0.5)
    targets_T = torch.randint(0, vocab, (num_tokens,), generator=gen)
    grad_T = torch.randn(num_tokens, generator=gen)
    return RandomInputs(
        hidden_TH.to(device=device, dtype=dtype),
        weight_VH.to(device=device, dtype=dtype),
        targets_T.to(device),
        grad_T.to(device),
    )


def reference(
    hidden_TH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_T: torch.Tensor,
    grad_T: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> Reference:
    """log_softmax(h @ W.T / tau).gather(y) in float64 from the (already rounded) inputs, with grads."""
    h = hidden_TH.detach().double().requires_grad_()
    w = weight_VH.detach().double().requires_grad_()
    logp_TV = torch.log_softmax(h @ w.T / temperature, dim=-1)
    logprobs_T = logp_TV.gather(-1, targets_T.long().unsqueeze(-1)).squeeze(-1)
    entropy_T = -(logp_TV.exp() * logp_TV).sum(-1)
    logprobs_T.backward(grad_T.double())
    return Reference(logprobs_T.detach(), entropy_T.detach(), h.grad, w.grad)


class LogProbError(NamedTuple):
    """How far approximate log-probs are from exact ones, per token and per DPO margin (nats)."""

    token_mean_abs: float
    token_bias: float
    """Mean signed error: a bias adds up linearly over a sequence, noise only as its square root."""
    token_max_abs: float
    sequence_mean_abs: float
    """Mean |error| of sums over `seq_len` consecutive tokens (one candidate's log-prob)."""
    margin_mean_abs: float
    """Mean |error| of the difference of two sequence sums (a DPO margin's reference term)."""
    margin_max_abs: float


def logprob_error(approx_T: torch.Tensor, exact_T: torch.Tensor, *, seq_len: int = 128) -> LogProbError:
    """Summarize approx - exact over tokens, over `seq_len`-token sums and over pairs of such sums.

    A margin pairs sequence i with sequence i + num_sequences // 2, like a chosen/rejected pair.
    """
    err_T = (approx_T.double() - exact_T.double()).flatten()
    num_seq = err_T.numel() // seq_len
    assert num_seq >= 2, f"need at least 2 sequences of {seq_len} tokens, got {err_T.numel()} tokens"
    seq_err_S = err_T[: num_seq * seq_len].view(num_seq, seq_len).sum(dim=1)
    half = num_seq // 2
    margin_err_P = seq_err_S[:half] - seq_err_S[half : 2 * half]
    return LogProbError(
        token_mean_abs=err_T.abs().mean().item(),
        token_bias=err_T.mean().item(),
        token_max_abs=err_T.abs().max().item(),
        sequence_mean_abs=seq_err_S.abs().mean().item(),
        margin_mean_abs=margin_err_P.abs().mean().item(),
        margin_max_abs=margin_err_P.abs().max().item(),
    )
