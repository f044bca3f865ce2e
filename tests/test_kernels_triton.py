"""The Triton engine against the float64 reference: on a GPU, or on CPU under Triton's interpreter.

TRITON_INTERPRET=1 only takes effect if it is set before triton is first imported (triton's own
library functions such as tl.zeros are jit functions too), and other test modules import triton.
So on a machine without CUDA the kernel tests here skip themselves, and one test reruns this file
in a fresh `pytest` subprocess with TRITON_INTERPRET=1, where they run on CPU tensors.

The interpreter cannot multiply bfloat16 tiles (triton-lang/triton#11584: it multiplies the raw
bits), so on CPU the kernels are checked in fp32, fp16 and FP8; bf16 runs in the tests marked gpu.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from megatron_sip.kernels import fused_linear_logprobs  # noqa: E402
from megatron_sip.kernels.reference import random_inputs, reference  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
RUNS_HERE = HAS_CUDA or INTERPRETED
kernel_test = pytest.mark.skipif(not RUNS_HERE, reason="runs in the TRITON_INTERPRET=1 subprocess (see below)")
INTERPRETER_TIMEOUT_S = 300


@pytest.mark.skipif(RUNS_HERE, reason="the kernel tests run directly in this process")
def test_kernels_under_interpreter_in_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu", __file__]
    result = subprocess.run(
        cmd, env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
        timeout=INTERPRETER_TIMEOUT_S,
    )
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert " passed" in result.stdout, result.stdout[-2000:]


@pytest.fixture(scope="module")
def device():
    return torch.device("cuda" if HAS_CUDA else "cpu")


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str) -> None:
    """|actual - expected| <= rel * max|expected| (gradients differ in scale from case to case)."""
    err = (actual.double().cpu() - expected.double().cpu()).abs().max()
    scale = expected.double().abs().max().clamp(min=1e-12)
    assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel:g} x max|ref| ({scale:.3g})"


def check_against_reference(inputs, *, temperature, chunk_size, value_atol, grad_rel) -> None:
    ref = reference(*(t.cpu() for t in inputs), temperature=temperature)
    hidden = inputs.hidden_TH.clone().requires_grad_()
    weight = inputs.weight_VH.clone().requires_grad_()
    out = fused_linear_logprobs(
        hidden, weight, inputs.targets_T,
        temperature=temperature, chunk_size=chunk_size, backend="triton", return_entropy=True,
    )
    out.logprobs.backward(inputs.grad_T)
    torch.testing.assert_close(out.logprobs.double().cpu(), ref.logprobs_T, atol=value_atol, rtol=0)
    torch.testing.assert_close(out.entropy.double().cpu(), ref.entropy_T, atol=value_atol, rtol=0)
    assert hidden.grad.dtype == hidden.dtype and weight.grad.dtype == weight.dtype
    assert_close_scaled(hidden.grad, ref.grad_hidden_TH, grad_rel, "grad_hidden")
    assert_close_scaled(weight.grad, ref.grad_weight_VH, grad_rel, "grad_weight")


# Small sizes: the interpreter runs each program in Python (~1 s for the largest case).
SMALL = [(1, 37, 16, 1.0, None), (5, 100, 24, 0.7, 33), (40, 203, 40, 1.3, 48)]


@kernel_test
@pytest.mark.parametrize("num_tokens,vocab,hidden,temperature,chunk_size", SMALL)
def test_fp32_forward_backward(device, num_tokens, vocab, hidden, temperature, chunk_size):
    inputs = random_inputs(num_tokens, vocab, hidden, seed=num_tokens, device=device)
    check_against_reference(inputs, temperature=temperature, chunk_size=chunk_size, value_atol=2e-5, grad_rel=2e-5)


@kernel_test
def test_fp16_forward_backward(device):
    """Low-precision operands: dz and grad_weight stored in fp16, grad_hidden accumulated in fp32."""
    inputs = random_inputs(40, 203, 40, dtype=torch.float16, seed=8, device=device)
    check_against_reference(inputs, temperature=1.0, chunk_size=64, value_atol=1e-4, grad_rel=3e-3)


@kernel_test
def test_fp8_forward_matches_emulation(device):
    """The FP8 kernel computes what the torch emulation of e4m3 rounding computes; error vs fp32 is bounded."""
    inputs = random_inputs(40, 203, 64, seed=9, device=device)
    args = (inputs.hidden_TH, inputs.weight_VH, inputs.targets_T)
    with torch.no_grad():
        fp8_triton = fused_linear_logprobs(*args, fp8=True, backend="triton", return_entropy=True)
        fp8_torch = fused_linear_logprobs(*args, fp8=True, backend="torch", return_entropy=True)
        exact = fused_linear_logprobs(*args, backend="torch")
    torch.testing.assert_close(fp8_triton.logprobs, fp8_torch.logprobs, atol=1e-4, rtol=0)
    torch.testing.assert_close(fp8_triton.entropy, fp8_torch.entropy, atol=1e-4, rtol=0)
    assert (fp8_triton.logprobs - exact).abs().mean() < 0.5


# --- GPU only ------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("num_tokens,vocab,hidden,chunk_size", [(1, 1000, 128, None), (300, 5003, 256, 1024)])
def test_bf16_forward_backward_gpu(device, num_tokens, vocab, hidden, chunk_size):
    inputs = random_inputs(num_tokens, vocab, hidden, dtype=torch.bfloat16, seed=3, device=device)
    check_against_reference(inputs, temperature=0.7, chunk_size=chunk_size, value_atol=2e-4, grad_rel=1.5e-2)


@pytest.mark.gpu
@gpu
def test_fp32_larger_gpu(device):
    inputs = random_inputs(513, 4099, 320, seed=4, device=device)
    check_against_reference(inputs, temperature=1.3, chunk_size=1000, value_atol=5e-5, grad_rel=5e-5)


@pytest.mark.gpu
@gpu
def test_fp8_gpu_matches_emulation(device):
    inputs = random_inputs(256, 8192, 512, dtype=torch.bfloat16, seed=5, device=device)
    with torch.no_grad():
        fp8_triton = fused_linear_logprobs(*inputs[:3], fp8=True, backend="triton")
        fp8_torch = fused_linear_logprobs(*inputs[:3], fp8=True, backend="torch")
    # Same rounded operands; the sums differ in order and in Hopper's short FP8 accumulator
    # (promoted to fp32 every 128 products), which a wrong kernel would exceed by orders of magnitude.
    torch.testing.assert_close(fp8_triton, fp8_torch, atol=1e-2, rtol=0)


@pytest.mark.gpu
@gpu
def test_auto_picks_triton_and_matches_torch_gpu(device):
    from megatron_sip.kernels import dispatch, triton_engine

    inputs = random_inputs(128, 3000, 256, dtype=torch.bfloat16, seed=6, device=device)
    assert isinstance(dispatch._engine("auto", inputs.hidden_TH, None, fp8_inputs=False), triton_engine.TritonFused)
    with torch.no_grad():
        auto = fused_linear_logprobs(*inputs[:3])
        fallback = fused_linear_logprobs(*inputs[:3], backend="torch")
    torch.testing.assert_close(auto, fallback, atol=2e-4, rtol=0)
