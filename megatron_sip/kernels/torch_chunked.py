"""Linear log-softmax statistics and their gradient in plain torch, tile by tile.

Legend: T tokens, H hidden size, V vocabulary rows of this shard, C rows of one vocabulary chunk,
B tokens of one token block; tau the temperature, y the targets (local ids, -1 = not here).

Forward (online log-sum-exp over chunks, as flash attention does over keys), with h' = h / tau:
    z_BC = h'_BH @ W_CH^T
    m <- max(m, max_C z);  s <- s exp(m_old - m) + sum_C exp(z - m);  zexp likewise
    z_y = h'_t . W_y  (a gather and a row dot, not a column of the tile)
Backward, given lse_T and the upstream gradient g_T of log p(y): dz = g (onehot(y) - p) with
p = exp(z - lse), and since -g p only scales rows,
    grad_h = (g W_y - g (sum_C p_BC @ W_CH)) / tau      grad_W_C = onehot^T (g h') + p^T (-g h')
Each tile recomputes its logits and turns them into p in place; -g scales grad_h's rows once at
the end and is folded into h' for grad_W; the one-hot parts are a gather and an index_add outside
the tiles. Nothing of size T x V exists: the working set is a few B x C fp32 tiles plus the
gradients themselves. Matmuls run in fp32 whatever the input dtype, so bf16 inputs accumulate in
fp32 as the Triton kernels do.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from megatron_sip.kernels import fp8
from megatron_sip.kernels.shards import SoftmaxStats

DEFAULT_CHUNK_ROWS = 2048
"""Vocabulary rows per chunk when the caller passes chunk_size=None."""
TILE_ELEMENTS = 1 << 23
"""Upper bound on B * C (32 MiB per fp32 tile); tokens are blocked to respect it. Fewer, larger
tiles mean fewer OpenMP parallel regions, which matters on a CPU shared with other processes."""


class TorchChunked:
    """The CPU and fallback engine: vocabulary chunks of `chunk_rows` rows, fp32 tiles."""

    def __init__(self, chunk_rows: Optional[int] = None) -> None:
        self.chunk_rows = chunk_rows or DEFAULT_CHUNK_ROWS

    def forward_stats(
        self,
        hidden_TH: torch.Tensor,
        weight_VH: torch.Tensor,
        local_targets_T: torch.Tensor,
        *,
        temperature: float,
        with_entropy: bool,
    ) -> SoftmaxStats:
        """Softmax statistics of z = hidden @ weight.T / temperature over this shard's rows."""
        num_tokens = hidden_TH.shape[0]
        fields = [torch.empty(num_tokens, dtype=torch.float32, device=hidden_TH.device) for _ in range(4)]
        max_T, sumexp_T, target_T, zexp_T = fields
        for t0, t1 in self._token_blocks(num_tokens, weight_VH.shape[0]):
            h_BH = _scaled_fp32(hidden_TH[t0:t1], temperature)
            stats = _block_stats(h_BH, weight_VH, self.chunk_rows, with_entropy)
            max_T[t0:t1], sumexp_T[t0:t1] = stats.max, stats.sumexp
            target_T[t0:t1] = _target_logits(h_BH, weight_VH, local_targets_T[t0:t1])
            if with_entropy:
                zexp_T[t0:t1] = stats.zexp
        return SoftmaxStats(max_T, sumexp_T, target_T, zexp_T if with_entropy else None)

    def backward(
        self,
        hidden_TH: torch.Tensor,
        weight_VH: torch.Tensor,
        local_targets_T: torch.Tensor,
        lse_T: torch.Tensor,
        grad_T: torch.Tensor,
        *,
        temperature: float,
        with_weight_grad: bool,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(grad_hidden fp32 [T, H], grad_weight [V, H] or None) of sum_t g_t log p(y_t).

        grad_hidden is this shard's part only: under TP the caller sums it over the group.
        """
        num_tokens, vocab = hidden_TH.shape[0], weight_VH.shape[0]
        h_TH = _scaled_fp32(hidden_TH, temperature)
        # dz = g (onehot - p): the -g p part scales rows, so tiles hold only p = exp(z - lse) and
        # -g goes into h' for grad_W (p^T (-g h')) and into grad_h's rows once, at the end.
        neg_g_T1 = grad_T.neg().unsqueeze(1)
        neg_gh_TH = h_TH * neg_g_T1
        pw_TH = torch.zeros_like(h_TH)
        grad_w_VH = torch.empty_like(weight_VH) if with_weight_grad else None
        blocks = self._token_blocks(num_tokens, vocab)
        tiles = _Tiles(blocks[0][1] if blocks else 0, self.chunk_rows, h_TH.device)
        targets = _TargetRows(local_targets_T, grad_T, h_TH, vocab, self.chunk_rows) if with_weight_grad else None
        # With one token block and fp32 weights each chunk's gradient is written in place;
        # otherwise it is summed in an fp32 tile and rounded once.
        direct = len(blocks) == 1 and weight_VH.dtype == torch.float32
        for chunk, v0 in enumerate(range(0, vocab, self.chunk_rows)):
            w_CH = weight_VH[v0 : v0 + self.chunk_rows].float()
            out_CH = None if grad_w_VH is None else grad_w_VH[v0 : v0 + self.chunk_rows]
            acc_CH = out_CH if direct or out_CH is None else torch.zeros_like(w_CH)
            for t0, t1 in blocks:
                p_BC = torch.mm(h_TH[t0:t1], w_CH.T, out=tiles.get(0, t1 - t0, w_CH.shape[0]))
                p_BC.sub_(lse_T[t0:t1, None]).exp_()
                pw_TH[t0:t1].addmm_(p_BC, w_CH)
                if acc_CH is None:
                    continue
                if direct:
                    torch.mm(p_BC.T, neg_gh_TH[t0:t1], out=acc_CH)
                else:
                    acc_CH.addmm_(p_BC.T, neg_gh_TH[t0:t1])
            if acc_CH is not None and not direct:
                targets.add_to_chunk(acc_CH, chunk, v0)
                out_CH.copy_(acc_CH)
        if direct and targets is not None:
            targets.add_to(grad_w_VH)
        grad_h_TH = pw_TH.mul_(neg_g_T1)
        _add_onehot_grad_hidden(grad_h_TH, weight_VH, local_targets_T, grad_T)
        return grad_h_TH.mul_(1.0 / temperature), grad_w_VH

    def fp8_stats(
        self,
        hidden_TH: torch.Tensor,
        weight_VH: torch.Tensor,
        local_targets_T: torch.Tensor,
        *,
        temperature: float,
        with_entropy: bool,
    ) -> SoftmaxStats:
        """forward_stats of e4m3-rounded operands: emulates the FP8 kernel's rounding, not its speed."""
        hidden_TH = fp8.dequantize_rows(*fp8.quantize_rows(hidden_TH))
        weight_VH = fp8.dequantize_rows(*fp8.quantize_rows(weight_VH))
        return self.forward_stats(
            hidden_TH, weight_VH, local_targets_T, temperature=temperature, with_entropy=with_entropy
        )

    def _token_blocks(self, num_tokens: int, vocab: int) -> list:
        rows = min(self.chunk_rows, vocab)
        block = max(1, TILE_ELEMENTS // max(rows, 1))
        return [(t0, min(t0 + block, num_tokens)) for t0 in range(0, num_tokens, block)]


class _Tiles:
    """Reused [B, C] fp32 scratch tiles.

    Allocating a fresh tile per chunk is correct but, with glibc malloc, freed tiles stay
    resident and the process's peak memory grows by a few tiles' worth; two buffers suffice.
    """

    def __init__(self, max_rows: int, max_cols: int, device: torch.device) -> None:
        self.num_elements = max_rows * max_cols
        self.device = device
        self.buffers: dict = {}

    def get(self, slot: int, rows: int, cols: int) -> torch.Tensor:
        """A contiguous [rows, cols] view of buffer `slot` (contents undefined)."""
        if slot not in self.buffers:
            self.buffers[slot] = torch.empty(self.num_elements, dtype=torch.float32, device=self.device)
        return self.buffers[slot][: rows * cols].view(rows, cols)


def _scaled_fp32(hidden_BH: torch.Tensor, temperature: float) -> torch.Tensor:
    """h / tau in fp32, always a new tensor (never aliases the caller's hidden)."""
    return hidden_BH.to(torch.float32).mul(1.0 / temperature)


def _block_stats(h_BH: torch.Tensor, weight_VH: torch.Tensor, chunk_rows: int, with_entropy: bool) -> SoftmaxStats:
    """Online max / sum-exp (/ sum exp*z) of h_BH @ weight.T over chunks of rows."""
    num_tokens = h_BH.shape[0]
    max_B = torch.full((num_tokens,), float("-inf"), dtype=torch.float32, device=h_BH.device)
    sumexp_B = torch.zeros_like(max_B)
    zexp_B = torch.zeros_like(max_B) if with_entropy else None
    tiles = _Tiles(num_tokens, chunk_rows, h_BH.device)
    for v0 in range(0, weight_VH.shape[0], chunk_rows):
        w_CH = weight_VH[v0 : v0 + chunk_rows].float()
        z_BC = torch.mm(h_BH, w_CH.T, out=tiles.get(0, num_tokens, w_CH.shape[0]))
        new_max_B = torch.maximum(max_B, z_BC.amax(dim=1))
        # exp(-inf) = 0 on the first chunk, when max_B is still -inf and the sums are 0.
        alpha_B = torch.exp(max_B - new_max_B)
        z_BC.sub_(new_max_B[:, None])
        if with_entropy:
            e_BC = torch.exp(z_BC, out=tiles.get(1, *z_BC.shape))
            chunk_sum_B = e_BC.sum(dim=1)
            # sum e^(z-m) z = sum e^(z-m) (z-m) + m sum e^(z-m), on the shifted tile.
            chunk_zexp_B = e_BC.mul_(z_BC).sum(dim=1).add_(new_max_B * chunk_sum_B)
            zexp_B.mul_(alpha_B).add_(chunk_zexp_B)
        else:
            chunk_sum_B = z_BC.exp_().sum(dim=1)
        sumexp_B.mul_(alpha_B).add_(chunk_sum_B)
        max_B = new_max_B
    return SoftmaxStats(max_B, sumexp_B, torch.zeros_like(max_B), zexp_B)


def _target_logits(h_BH: torch.Tensor, weight_VH: torch.Tensor, local_targets_B: torch.Tensor) -> torch.Tensor:
    """z_y = h'_t . W_y for targets in this shard, 0 elsewhere."""
    here_B = local_targets_B >= 0
    rows_BH = weight_VH[local_targets_B.clamp(min=0)].float()
    return torch.where(here_B, (h_BH * rows_BH).sum(dim=1), torch.zeros((), device=h_BH.device))


def _add_onehot_grad_hidden(
    grad_h_TH: torch.Tensor, weight_VH: torch.Tensor, local_targets_T: torch.Tensor, grad_T: torch.Tensor
) -> None:
    """The onehot(y) part of dz for grad_h: grad_h += g W_y (before the 1/tau)."""
    # Targets held by another TP rank get coefficient 0 (and a harmless row index 0).
    coef_T1 = torch.where(local_targets_T >= 0, grad_T, torch.zeros((), device=grad_T.device)).unsqueeze(1)
    grad_h_TH.addcmul_(coef_T1, weight_VH[local_targets_T.clamp(min=0)].float())


class _TargetRows:
    """The onehot(y) part of dz for grad_W: grad_W[y_t] += g_t h'_t.

    Added at once (fp32 weights, add_to), or chunk by chunk into each chunk's fp32 accumulator
    before its single rounding to the weight's dtype (add_to_chunk); for that, tokens are sorted
    by target row once.
    """

    def __init__(
        self, local_targets_T: torch.Tensor, grad_T: torch.Tensor, h_TH: torch.Tensor, vocab: int, chunk_rows: int
    ) -> None:
        order_T = torch.argsort(local_targets_T)
        self.rows_N = local_targets_T[order_T]  # targets on other ranks (-1) sort first, outside every chunk
        self.values_NH = (h_TH * grad_T.unsqueeze(1))[order_T]
        starts = torch.arange(0, vocab + chunk_rows, chunk_rows, device=local_targets_T.device).clamp(max=vocab)
        self.bounds = torch.searchsorted(self.rows_N, starts).tolist()  # one host sync for all chunks

    def add_to(self, grad_w_VH: torch.Tensor) -> None:
        lo = self.bounds[0]
        grad_w_VH.index_add_(0, self.rows_N[lo:], self.values_NH[lo:])

    def add_to_chunk(self, acc_CH: torch.Tensor, chunk: int, row_start: int) -> None:
        lo, hi = self.bounds[chunk], self.bounds[chunk + 1]
        if hi > lo:
            acc_CH.index_add_(0, self.rows_N[lo:hi] - row_start, self.values_NH[lo:hi])
