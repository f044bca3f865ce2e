"""Compile the Triton kernels for an H100 (sm_90a) on a machine without a GPU.

CI has no GPU and the interpreter checks arithmetic only. This catches what neither sees: kernels
that fail to lower for Hopper, lose their wgmma or cp.async pipelining, need more shared memory
than an SM has, or spill registers, with the tile configs triton_engine launches. Arguments are
specialized the way a JIT launch at T=8192, V=131072, H=4096 specializes them (16-byte aligned
pointers, sizes divisible by 16 hinted, unit strides as constants).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("kernels are interpreted in this process (TRITON_INTERPRET set)", allow_module_level=True)
try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource
except ImportError as exc:  # another triton layout: the GPU run still covers compilation
    pytest.skip(f"triton's ahead-of-time API is not available here: {exc}", allow_module_level=True)

from megatron_sip.kernels import triton_kernels  # noqa: E402
from megatron_sip.kernels.triton_engine import _dot_precision, _tiles  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")]

H100 = GPUTarget("cuda", 90, 32)
SMEM_PER_BLOCK_MAX = 227 * 1024
T, V, H, C = 8192, 131072, 4096, 8192
CUDA = torch.device("cuda")  # only names the device for _tiles; nothing runs on it


def compile_for_h100(kernel, args: dict, constexprs: dict, tiles) -> tuple:
    """(metadata, ptx, ptxas -v report) of `kernel` specialized to `args` {name: (type, value)}."""
    signature, attrs, constants = {}, {}, dict(constexprs)
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        typ, value = args[name]
        if typ == "i32" and value == 1:
            signature[name], constants[name] = "constexpr", 1
            continue
        signature[name] = typ
        if typ.startswith("*") or (typ == "i32" and value % 16 == 0):
            attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    compiled = triton.compile(source, target=H100, options={"num_warps": tiles.num_warps, "num_stages": tiles.num_stages})
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        report = subprocess.run(
            [get_ptxas(90).path, "-arch=sm_90a", "-v", path, "-o", os.path.join(tmp, "kernel.cubin")],
            capture_output=True, text=True, check=True,
        )
    return compiled.metadata, ptx, report.stdout + report.stderr


def assert_hopper_ready(name: str, metadata, ptx: str, report: str) -> None:
    assert "wgmma.mma_async" in ptx, f"{name}: no wgmma instructions (tensor cores unused)"
    assert "cp.async" in ptx, f"{name}: loads are not pipelined (no cp.async)"
    assert metadata.shared <= SMEM_PER_BLOCK_MAX, f"{name}: {metadata.shared} B of shared memory"
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", report)]
    assert spills and max(spills) == 0, f"{name}: register spills\n{report}"


FORWARD_ARGS = dict(
    hidden_ptr=("*bf16", None), weight_ptr=("*bf16", None), targets_ptr=("*i64", None),
    hidden_scale_ptr=("*fp32", None), weight_scale_ptr=("*fp32", None), max_ptr=("*fp32", None),
    sumexp_ptr=("*fp32", None), target_ptr=("*fp32", None), zexp_ptr=("*fp32", None),
    num_tokens=("i32", T), vocab_size=("i32", V), hidden_size=("i32", H), rows_per_split=("i32", 4096),
    stride_ht=("i32", H), stride_wv=("i32", H), inv_temp=("fp32", 1.0),
)


@pytest.mark.parametrize("variant", ["bf16", "bf16-entropy", "fp8"])
def test_forward_kernel_compiles_for_h100(variant):
    fp8 = variant == "fp8"
    dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
    args = dict(FORWARD_ARGS)
    if fp8:
        args.update(hidden_ptr=("*fp8e4nv", None), weight_ptr=("*fp8e4nv", None))
    tiles = _tiles(CUDA, dtype, fp8_inputs=fp8)
    constexprs = dict(
        BLOCK_T=tiles.block_t, BLOCK_V=tiles.block_v, BLOCK_K=tiles.block_k, WITH_ENTROPY=variant == "bf16-entropy",
        HAS_SCALES=fp8, FP8_PROMOTE=fp8, DOT_PRECISION=_dot_precision(dtype),
    )
    assert_hopper_ready(variant, *compile_for_h100(triton_kernels.forward_stats_kernel, args, constexprs, tiles))


def test_backward_kernels_compile_for_h100():
    tiles = _tiles(CUDA, torch.bfloat16)
    blocks = dict(BLOCK_T=tiles.block_t, BLOCK_V=tiles.block_v, BLOCK_K=tiles.block_k, DOT_PRECISION="tf32")
    grad_logits_args = dict(
        hidden_ptr=("*bf16", None), weight_ptr=("*bf16", None), targets_ptr=("*i64", None), lse_ptr=("*fp32", None),
        grad_ptr=("*fp32", None), dlogits_ptr=("*bf16", None), num_tokens=("i32", T), num_rows=("i32", C),
        hidden_size=("i32", H), row_start=("i32", C), stride_ht=("i32", H), stride_wv=("i32", H),
        stride_dt=("i32", C), inv_temp=("fp32", 1.0),
    )
    result = compile_for_h100(triton_kernels.grad_logits_kernel, grad_logits_args, blocks, tiles)
    assert_hopper_ready("grad_logits", *result)

    matmul = dict(
        BLOCK_M=tiles.block_t, BLOCK_N=tiles.block_v, BLOCK_K=tiles.block_k, GROUP_M=8, DOT_PRECISION="tf32"
    )
    # grad_h[T, H] += dz[T, C] @ W_C[C, H], accumulated in fp32.
    grad_h_args = dict(
        a_ptr=("*bf16", None), b_ptr=("*bf16", None), c_ptr=("*fp32", None), M=("i32", T), N=("i32", H),
        K=("i32", C), stride_am=("i32", C), stride_ak=("i32", 1), stride_bk=("i32", H), stride_bn=("i32", 1),
        stride_cm=("i32", H), stride_cn=("i32", 1),
    )
    result = compile_for_h100(triton_kernels.matmul_kernel, grad_h_args, dict(matmul, ACCUMULATE=True), tiles)
    assert_hopper_ready("matmul grad_h", *result)
    # grad_W_C[C, H] = dz^T[C, T] @ h[T, H]: A read transposed.
    grad_w_args = dict(
        grad_h_args, c_ptr=("*bf16", None), M=("i32", C), K=("i32", T), stride_am=("i32", 1), stride_ak=("i32", C)
    )
    result = compile_for_h100(triton_kernels.matmul_kernel, grad_w_args, dict(matmul, ACCUMULATE=False), tiles)
    assert_hopper_ready("matmul grad_w", *result)
