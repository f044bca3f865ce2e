"""Row-wise FP8 (e4m3) quantization for the forward-only log-prob path.

Legend: R rows (tokens of hidden, vocabulary rows of weight), K the hidden size.

Each row x_R is stored as q = round_e4m3(x / s) with s = max|x_R| / 448 (448 is e4m3's largest
finite value), so x ~= s * q with a relative rounding error of at most 2^-4 per element (3
mantissa bits). A logit z_tv = s_t s_v (q_t . q_v) then carries two such errors per product;
docs/kernels.md measures what that does to log-probs and DPO margins. Per-row scales (rather than
one per tensor) keep one outlier token or vocabulary row from crushing the resolution of the rest.
"""

from __future__ import annotations

from typing import Tuple

import torch

E4M3_MAX = 448.0
"""Largest finite float8_e4m3fn value."""
QUANTIZE_BLOCK_ROWS = 8192
"""Rows converted at a time, bounding the fp32 temporary to 8192 x K."""


def quantize_rows(x_RK: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(q_RK float8_e4m3fn, scale_R float32) with x_RK ~= scale_R[:, None] * q_RK."""
    q_RK = torch.empty(x_RK.shape, dtype=torch.float8_e4m3fn, device=x_RK.device)
    scale_R = torch.empty(x_RK.shape[0], dtype=torch.float32, device=x_RK.device)
    for r0 in range(0, x_RK.shape[0], QUANTIZE_BLOCK_ROWS):
        block_BK = x_RK[r0 : r0 + QUANTIZE_BLOCK_ROWS].float()
        # An all-zero row gets a tiny positive scale and quantizes to zeros instead of 0/0.
        amax_B = block_BK.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny)
        scale_B = amax_B / E4M3_MAX
        q_RK[r0 : r0 + QUANTIZE_BLOCK_ROWS] = (block_BK / scale_B[:, None]).to(torch.float8_e4m3fn)
        scale_R[r0 : r0 + QUANTIZE_BLOCK_ROWS] = scale_B
    return q_RK, scale_R


def dequantize_rows(q_RK: torch.Tensor, scale_R: torch.Tensor) -> torch.Tensor:
    """scale_R[:, None] * q_RK in float32 (the torch backend's emulation of the FP8 kernel)."""
    return q_RK.float() * scale_R[:, None]
