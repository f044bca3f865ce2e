"""Launchers of the Triton kernels: the GPU engine behind backend="triton".

Legend: T tokens, H hidden size, V vocabulary rows of this shard, S splits, C chunk rows.

Under TRITON_INTERPRET=1 the same kernels run on CPU tensors (numpy underneath); tile sizes then
shrink to 16 so that tests stay fast. Block sizes on the GPU are fixed (no autotuning): 128 x 128
logit tiles with 64-wide K steps (128 for FP8), 8 warps, 3 pipeline stages, sized for H100.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from megatron_sip.kernels import fp8, triton_kernels
from megatron_sip.kernels.shards import SoftmaxStats, merge_splits

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
"""Whether the kernels were built for Triton's CPU interpreter (read when this module loads)."""
DLOGITS_BUDGET_ELEMENTS = 1 << 26
"""Default backward chunk: the [T, C] dz buffer holds at most this many elements (128 MiB bf16)."""
PROGRAMS_PER_SM = 2
"""Forward: split the vocabulary until the grid has about this many programs per SM."""


@dataclass(frozen=True)
class _Tiles:
    block_t: int
    block_v: int
    block_k: int
    num_warps: int
    num_stages: int


def _tiles(device: torch.device, dtype: torch.dtype, *, fp8_inputs: bool = False) -> _Tiles:
    if device.type != "cuda":
        return _Tiles(16, 16, 16, 1, 1)
    if fp8_inputs:
        return _Tiles(128, 128, 128, 8, 3)
    if dtype == torch.float32:
        # fp32 runs as exact ("ieee") dots, for tests: smaller tiles keep registers in check.
        return _Tiles(64, 64, 32, 4, 2)
    return _Tiles(128, 128, 64, 8, 3)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs promise fp32 results: no TF32 rounding of the operands.
    return "ieee" if dtype == torch.float32 else "tf32"


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def check_device(hidden: torch.Tensor, *, fp8_inputs: bool) -> None:
    """Raise ValueError when the Triton kernels cannot run on hidden's device."""
    if hidden.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"backend: 'triton' needs CUDA tensors (got {hidden.device}); use backend='torch' or TRITON_INTERPRET=1"
        )
    if fp8_inputs and hidden.device.type == "cuda" and torch.cuda.get_device_capability(hidden.device) < (8, 9):
        raise ValueError("fp8: the Triton FP8 kernel needs compute capability >= 8.9 (Ada, Hopper); use fp8=False")


class TritonFused:
    """Fused Triton engine; `chunk_rows` bounds the backward's [T, C] dz buffer."""

    def __init__(self, chunk_rows: Optional[int] = None) -> None:
        self.chunk_rows = chunk_rows

    def forward_stats(
        self,
        hidden_TH: torch.Tensor,
        weight_VH: torch.Tensor,
        local_targets_T: torch.Tensor,
        *,
        temperature: float,
        with_entropy: bool,
    ) -> SoftmaxStats:
        """Softmax statistics of hidden @ weight.T / temperature over this shard's rows."""
        return _launch_forward(
            hidden_TH.contiguous(), weight_VH.contiguous(), local_targets_T, None, None,
            temperature=temperature, with_entropy=with_entropy,
        )

    def fp8_stats(
        self,
        hidden_TH: torch.Tensor,
        weight_VH: torch.Tensor,
        local_targets_T: torch.Tensor,
        *,
        temperature: float,
        with_entropy: bool,
    ) -> SoftmaxStats:
        """forward_stats with both operands quantized to e4m3 with per-row scales."""
        q_hidden_TH, hidden_scale_T = fp8.quantize_rows(hidden_TH)
        q_weight_VH, weight_scale_V = fp8.quantize_rows(weight_VH)
        return _launch_forward(
            q_hidden_TH, q_weight_VH, local_targets_T, hidden_scale_T, weight_scale_V,
            temperature=temperature, with_entropy=with_entropy,
        )

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
        """(grad_hidden fp32 [T, H], grad_weight [V, H] or None) of sum_t g_t log p(y_t) on this shard."""
        hidden_TH, weight_VH = hidden_TH.contiguous(), weight_VH.contiguous()
        num_tokens, hidden_size = hidden_TH.shape
        vocab = weight_VH.shape[0]
        grad_h_TH = torch.zeros(num_tokens, hidden_size, dtype=torch.float32, device=hidden_TH.device)
        grad_w_VH = torch.empty_like(weight_VH) if with_weight_grad else None
        if num_tokens == 0:
            if grad_w_VH is not None:
                grad_w_VH.zero_()
            return grad_h_TH, grad_w_VH
        tiles = _tiles(hidden_TH.device, hidden_TH.dtype)
        rows = self._chunk_rows(num_tokens, vocab, tiles)
        scaled_grad_T = (grad_T.float() / temperature).contiguous()
        dz_TC = torch.empty(num_tokens, min(rows, vocab), dtype=hidden_TH.dtype, device=hidden_TH.device)
        for v0 in range(0, vocab, rows):
            w_CH = weight_VH[v0 : v0 + rows]
            dz = dz_TC[:, : w_CH.shape[0]]
            _launch_grad_logits(hidden_TH, w_CH, local_targets_T, lse_T, scaled_grad_T, dz, v0, temperature, tiles)
            _launch_matmul(dz, w_CH, grad_h_TH, accumulate=True)
            if grad_w_VH is not None:
                _launch_matmul(dz.T, hidden_TH, grad_w_VH[v0 : v0 + rows], accumulate=False)
        return grad_h_TH, grad_w_VH

    def _chunk_rows(self, num_tokens: int, vocab: int, tiles: _Tiles) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        rows = max(tiles.block_v, DLOGITS_BUDGET_ELEMENTS // num_tokens)
        return min(vocab, rows // tiles.block_v * tiles.block_v)


def _launch_forward(
    hidden_TH: torch.Tensor,
    weight_VH: torch.Tensor,
    local_targets_T: torch.Tensor,
    hidden_scale_T: Optional[torch.Tensor],
    weight_scale_V: Optional[torch.Tensor],
    *,
    temperature: float,
    with_entropy: bool,
) -> SoftmaxStats:
    num_tokens, hidden_size = hidden_TH.shape
    vocab = weight_VH.shape[0]
    device = hidden_TH.device
    has_scales = hidden_scale_T is not None
    tiles = _tiles(device, hidden_TH.dtype, fp8_inputs=has_scales)
    num_t_blocks = _cdiv(num_tokens, tiles.block_t)
    max_splits = _cdiv(vocab, tiles.block_v)
    num_splits = max(1, min(max_splits, _cdiv(PROGRAMS_PER_SM * _num_sms(device), max(num_t_blocks, 1))))
    rows_per_split = _cdiv(_cdiv(vocab, num_splits), tiles.block_v) * tiles.block_v
    num_splits = _cdiv(vocab, rows_per_split)
    out_ST = torch.empty(4 if with_entropy else 3, num_splits, num_tokens, dtype=torch.float32, device=device)
    if num_tokens > 0:
        # Scale pointers are unused without FP8; any fp32 tensor fills the slot.
        hidden_scale = hidden_scale_T if has_scales else out_ST
        weight_scale = weight_scale_V if has_scales else out_ST
        triton_kernels.forward_stats_kernel[(num_t_blocks, num_splits)](
            hidden_TH, weight_VH, local_targets_T.contiguous(), hidden_scale, weight_scale,
            out_ST[0], out_ST[1], out_ST[2], out_ST[3] if with_entropy else out_ST[0],
            num_tokens, vocab, hidden_size, rows_per_split, hidden_TH.stride(0), weight_VH.stride(0),
            1.0 / temperature,
            BLOCK_T=tiles.block_t, BLOCK_V=tiles.block_v, BLOCK_K=tiles.block_k,
            WITH_ENTROPY=with_entropy, HAS_SCALES=has_scales, FP8_PROMOTE=has_scales,
            DOT_PRECISION=_dot_precision(hidden_TH.dtype),
            num_warps=tiles.num_warps, num_stages=tiles.num_stages,
        )
    stats_S = SoftmaxStats(out_ST[0], out_ST[1], out_ST[2], out_ST[3] if with_entropy else None)
    return merge_splits(stats_S)


def _launch_grad_logits(
    hidden_TH: torch.Tensor,
    w_CH: torch.Tensor,
    local_targets_T: torch.Tensor,
    lse_T: torch.Tensor,
    scaled_grad_T: torch.Tensor,
    dz_TC: torch.Tensor,
    row_start: int,
    temperature: float,
    tiles: _Tiles,
) -> None:
    num_tokens, hidden_size = hidden_TH.shape
    num_rows = w_CH.shape[0]
    grid = (_cdiv(num_tokens, tiles.block_t), _cdiv(num_rows, tiles.block_v))
    triton_kernels.grad_logits_kernel[grid](
        hidden_TH, w_CH, local_targets_T.contiguous(), lse_T.contiguous(), scaled_grad_T, dz_TC,
        num_tokens, num_rows, hidden_size, row_start, hidden_TH.stride(0), w_CH.stride(0), dz_TC.stride(0),
        1.0 / temperature,
        BLOCK_T=tiles.block_t, BLOCK_V=tiles.block_v, BLOCK_K=tiles.block_k,
        DOT_PRECISION=_dot_precision(hidden_TH.dtype),
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )


def _launch_matmul(a_MK: torch.Tensor, b_KN: torch.Tensor, c_MN: torch.Tensor, *, accumulate: bool) -> None:
    """c (+)= a @ b through matmul_kernel; any strides, fp32 accumulation."""
    M, K = a_MK.shape
    N = b_KN.shape[1]
    tiles = _tiles(a_MK.device, a_MK.dtype)
    block_m, block_n = tiles.block_t, tiles.block_v
    grid = (_cdiv(M, block_m) * _cdiv(N, block_n),)
    triton_kernels.matmul_kernel[grid](
        a_MK, b_KN, c_MN, M, N, K,
        a_MK.stride(0), a_MK.stride(1), b_KN.stride(0), b_KN.stride(1), c_MN.stride(0), c_MN.stride(1),
        ACCUMULATE=accumulate, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=tiles.block_k, GROUP_M=8,
        DOT_PRECISION=_dot_precision(a_MK.dtype),
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )


def _cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative ints."""
    return -(-a // b)
