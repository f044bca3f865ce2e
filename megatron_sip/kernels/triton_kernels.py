"""Triton kernels of the fused linear log-probs (imported only when triton is installed).

Legend: T tokens, H hidden size, V vocabulary rows of this shard, S vocabulary splits, C rows of
one backward chunk; tiles are BLOCK_T x BLOCK_V logits reduced over H in BLOCK_K steps.

forward_stats_kernel, grid (T / BLOCK_T, S): program (i, s) walks the rows of split s tile by
tile, z = h W^T (fp32 accumulate) times inv_temp (or the FP8 row scales), and keeps the online
max m, sum exp(z - m), sum exp(z - m) z and the target logit of its BLOCK_T tokens. No logit
leaves the chip; splits are merged afterwards (shards.merge_splits), like flash-decoding.

grad_logits_kernel, grid (T / BLOCK_T, C / BLOCK_V): recomputes z for one chunk of C rows and
writes dz = (g / tau) (onehot(y) - exp(z - lse)) for it, in the input dtype ([T, C], bounded).

matmul_kernel: C (+)= A @ B with fp32 accumulation and arbitrary strides; the backward uses it for
grad_h += dz @ W_C (accumulating across chunks in fp32) and grad_W_C = dz^T @ h.

Row offsets are widened to int64 before multiplying by strides: V * H passes 2^31 at V=256k, H=8k.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _logits_tile(
    hidden_ptr,
    weight_ptr,
    offs_t,
    offs_v,
    t_mask,
    v_mask,
    hidden_size,
    stride_ht,
    stride_wv,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    FP8_PROMOTE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """h[offs_t] @ W[offs_v]^T as a [BLOCK_T, BLOCK_V] fp32 tile."""
    acc = tl.zeros((BLOCK_T, BLOCK_V), dtype=tl.float32)
    h_rows = offs_t.to(tl.int64)[:, None] * stride_ht
    w_rows = offs_v.to(tl.int64)[None, :] * stride_wv
    for k0 in range(0, hidden_size, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < hidden_size
        h = tl.load(hidden_ptr + h_rows + offs_k[None, :], mask=t_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(weight_ptr + w_rows + offs_k[:, None], mask=v_mask[None, :] & k_mask[:, None], other=0.0)
        if FP8_PROMOTE:
            # Hopper's FP8 MMA keeps a short accumulator; promoting each BLOCK_K partial sum into
            # the fp32 tile bounds that error to BLOCK_K products (DeepSeek-V3's remedy).
            acc = tl.dot(h, w, acc, max_num_imprecise_acc=BLOCK_K)
        else:
            acc = tl.dot(h, w, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def forward_stats_kernel(
    hidden_ptr,
    weight_ptr,
    targets_ptr,
    hidden_scale_ptr,
    weight_scale_ptr,
    max_ptr,
    sumexp_ptr,
    target_ptr,
    zexp_ptr,
    num_tokens,
    vocab_size,
    hidden_size,
    rows_per_split,
    stride_ht,
    stride_wv,
    inv_temp,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    HAS_SCALES: tl.constexpr,
    FP8_PROMOTE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Online softmax statistics of one token block over one vocabulary split; outputs are [S, T]."""
    pid_t = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = offs_t < num_tokens
    target = tl.load(targets_ptr + offs_t, mask=t_mask, other=-1)
    if HAS_SCALES:
        row_scale = tl.load(hidden_scale_ptr + offs_t, mask=t_mask, other=0.0) * inv_temp
    run_max = tl.full((BLOCK_T,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_T,), dtype=tl.float32)
    run_zexp = tl.zeros((BLOCK_T,), dtype=tl.float32)
    target_logit = tl.zeros((BLOCK_T,), dtype=tl.float32)
    v_begin = pid_s * rows_per_split
    v_end = tl.minimum(v_begin + rows_per_split, vocab_size)
    for v0 in range(v_begin, v_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        v_mask = offs_v < v_end
        z = _logits_tile(
            hidden_ptr, weight_ptr, offs_t, offs_v, t_mask, v_mask, hidden_size, stride_ht, stride_wv,
            BLOCK_T, BLOCK_V, BLOCK_K, FP8_PROMOTE, DOT_PRECISION,
        )
        if HAS_SCALES:
            col_scale = tl.load(weight_scale_ptr + offs_v, mask=v_mask, other=0.0)
            z = z * row_scale[:, None] * col_scale[None, :]
        else:
            z = z * inv_temp
        z = tl.where(v_mask[None, :], z, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        # exp(-inf) = 0 on the first tile, while run_max is -inf and the sums are still 0.
        alpha = tl.exp(run_max - new_max)
        e = tl.exp(z - new_max[:, None])
        run_sum = run_sum * alpha + tl.sum(e, axis=1)
        if WITH_ENTROPY:
            run_zexp = run_zexp * alpha + tl.sum(e * tl.where(v_mask[None, :], z, 0.0), axis=1)
        target_logit += tl.sum(tl.where(offs_v[None, :] == target[:, None], z, 0.0), axis=1)
        run_max = new_max
    out = pid_s * num_tokens + offs_t
    tl.store(max_ptr + out, run_max, mask=t_mask)
    tl.store(sumexp_ptr + out, run_sum, mask=t_mask)
    tl.store(target_ptr + out, target_logit, mask=t_mask)
    if WITH_ENTROPY:
        tl.store(zexp_ptr + out, run_zexp, mask=t_mask)


@triton.jit
def grad_logits_kernel(
    hidden_ptr,
    weight_ptr,
    targets_ptr,
    lse_ptr,
    grad_ptr,
    dlogits_ptr,
    num_tokens,
    num_rows,
    hidden_size,
    row_start,
    stride_ht,
    stride_wv,
    stride_dt,
    inv_temp,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dz[t, c] = grad[t] * (onehot - softmax) for rows row_start + c of this shard.

    weight_ptr points at row `row_start`; targets are shard-local ids; grad already holds g / tau.
    """
    pid_t = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    t_mask = offs_t < num_tokens
    v_mask = offs_v < num_rows
    z = _logits_tile(
        hidden_ptr, weight_ptr, offs_t, offs_v, t_mask, v_mask, hidden_size, stride_ht, stride_wv,
        BLOCK_T, BLOCK_V, BLOCK_K, False, DOT_PRECISION,
    )
    lse = tl.load(lse_ptr + offs_t, mask=t_mask, other=0.0)
    grad = tl.load(grad_ptr + offs_t, mask=t_mask, other=0.0)
    target = tl.load(targets_ptr + offs_t, mask=t_mask, other=-1)
    prob = tl.exp(z * inv_temp - lse[:, None])
    onehot = tl.where((offs_v[None, :] + row_start) == target[:, None], 1.0, 0.0)
    dz = grad[:, None] * (onehot - prob)
    ptrs = dlogits_ptr + offs_t.to(tl.int64)[:, None] * stride_dt + offs_v[None, :]
    tl.store(ptrs, dz.to(dlogits_ptr.dtype.element_ty), mask=t_mask[:, None] & v_mask[None, :])


@triton.jit
def matmul_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    ACCUMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """C[M, N] = A[M, K] @ B[K, N] (+ C if ACCUMULATE), fp32 accumulate, stored in C's dtype."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped ordering: GROUP_M row-blocks share each column-block of B while it sits in L2.
    group_size = GROUP_M * num_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    a_rows = offs_m.to(tl.int64)[:, None] * stride_am
    b_cols = offs_n.to(tl.int64)[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        k_mask = offs_k < K
        a = tl.load(a_ptr + a_rows + offs_k[None, :] * stride_ak, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptr + offs_k[:, None] * stride_bk + b_cols, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    c_mask = m_mask[:, None] & n_mask[None, :]
    if ACCUMULATE:
        acc += tl.load(c_ptrs, mask=c_mask, other=0.0).to(tl.float32)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)
