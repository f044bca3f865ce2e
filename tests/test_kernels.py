"""fused_linear_logprobs, torch backend: float64 reference, TP=2 over gloo, memory, bad input.

Legend: T tokens, H hidden size, V vocabulary (V_local: one TP shard).
"""

from __future__ import annotations


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from megatron_sip.kernels import TokenLogProbs, fused_linear_logprobs, torch_chunked
from megatron_sip.kernels.reference import random_inputs, reference
from megatron_sip.net import free_port

# (values atol in nats, gradient error relative to the gradient's max |entry|) per input dtype.
# bf16 inputs are compared with a float64 reference of the same rounded inputs: the math runs in
# fp32, so values stay tight; gradients are returned in bf16 (8 bits of mantissa).
TOLERANCES = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-5, 8e-3)}
SHAPES = [  # (T, V, H, chunk_size): one token, vocab not divisible by the chunk, many tokens
    (1, 37, 16, 8),
    (3, 100, 24, 33),
    (257, 501, 40, 64),
]


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str) -> None:
    """|actual - expected| <= rel * max|expected| (gradients differ in scale from case to case)."""
    err = (actual.double() - expected.double()).abs().max()
    scale = expected.double().abs().max().clamp(min=1e-12)
    assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel:g} x max|ref| ({scale:.3g})"


def run_fused(inputs, **kwargs) -> tuple:
    hidden = inputs.hidden_TH.clone().requires_grad_()
    weight = inputs.weight_VH.clone().requires_grad_()
    out = fused_linear_logprobs(hidden, weight, inputs.targets_T, return_entropy=True, **kwargs)
    out.logprobs.backward(inputs.grad_T)
    return out, hidden.grad, weight.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
@pytest.mark.parametrize("num_tokens,vocab,hidden,chunk_size", SHAPES)
def test_matches_float64_reference(num_tokens, vocab, hidden, chunk_size, temperature, dtype):
    inputs = random_inputs(num_tokens, vocab, hidden, dtype=dtype, seed=num_tokens * 7 + int(temperature * 10))
    ref = reference(*inputs, temperature=temperature)
    out, grad_hidden, grad_weight = run_fused(inputs, temperature=temperature, chunk_size=chunk_size, backend="torch")
    value_atol, grad_rel = TOLERANCES[dtype]
    assert out.logprobs.dtype == torch.float32 and out.logprobs.shape == (num_tokens,)
    torch.testing.assert_close(out.logprobs.double(), ref.logprobs_T, atol=value_atol, rtol=0)
    torch.testing.assert_close(out.entropy.double(), ref.entropy_T, atol=value_atol, rtol=0)
    assert grad_hidden.dtype == dtype and grad_weight.dtype == dtype
    assert_close_scaled(grad_hidden, ref.grad_hidden_TH, grad_rel, "grad_hidden")
    assert_close_scaled(grad_weight, ref.grad_weight_VH, grad_rel, "grad_weight")


def test_token_blocks_and_default_chunk(monkeypatch):
    """Several token blocks (the fp32 accumulator path of grad_weight) and chunk_size=None."""
    monkeypatch.setattr(torch_chunked, "TILE_ELEMENTS", 16 * 8)
    inputs = random_inputs(50, 70, 24, seed=3)
    ref = reference(*inputs, temperature=0.9)
    for chunk_size in (16, None):
        out, grad_hidden, grad_weight = run_fused(inputs, temperature=0.9, chunk_size=chunk_size, backend="torch")
        torch.testing.assert_close(out.logprobs.double(), ref.logprobs_T, atol=2e-5, rtol=0)
        assert_close_scaled(grad_hidden, ref.grad_hidden_TH, 2e-5, "grad_hidden")
        assert_close_scaled(grad_weight, ref.grad_weight_VH, 2e-5, "grad_weight")


def test_leading_dims_repeated_targets_and_frozen_weight():
    """hidden [B, S, H] with targets [B, S]; every target the same row; weight without grad."""
    inputs = random_inputs(6, 30, 16, seed=5)
    targets_T = torch.full((6,), 4)
    ref = reference(inputs.hidden_TH, inputs.weight_VH, targets_T, inputs.grad_T)
    hidden = inputs.hidden_TH.clone().view(2, 3, 16).requires_grad_()
    logprobs = fused_linear_logprobs(hidden, inputs.weight_VH, targets_T.view(2, 3), chunk_size=7)
    assert isinstance(logprobs, torch.Tensor) and logprobs.shape == (2, 3)
    logprobs.backward(inputs.grad_T.view(2, 3))
    torch.testing.assert_close(logprobs.double().flatten(), ref.logprobs_T, atol=2e-5, rtol=0)
    assert_close_scaled(hidden.grad.flatten(0, 1), ref.grad_hidden_TH, 2e-5, "grad_hidden")

    weight = inputs.weight_VH.clone().requires_grad_()
    fused_linear_logprobs(inputs.hidden_TH, weight, targets_T, chunk_size=7).backward(inputs.grad_T)
    assert_close_scaled(weight.grad, ref.grad_weight_VH, 2e-5, "grad_weight (repeated target rows)")


def test_no_tokens():
    weight = torch.randn(10, 8, requires_grad=True)
    out = fused_linear_logprobs(torch.zeros(0, 8), weight, torch.zeros(0, dtype=torch.long), return_entropy=True)
    assert isinstance(out, TokenLogProbs) and out.logprobs.shape == (0,) and out.entropy.shape == (0,)
    out.logprobs.sum().backward()
    assert torch.count_nonzero(weight.grad) == 0


def test_fp8_emulation_forward_only():
    inputs = random_inputs(64, 300, 64, seed=11)
    with torch.no_grad():
        exact = fused_linear_logprobs(inputs.hidden_TH, inputs.weight_VH, inputs.targets_T)
        rounded = fused_linear_logprobs(inputs.hidden_TH, inputs.weight_VH, inputs.targets_T, fp8=True)
    err = (rounded - exact).abs()
    # e4m3 keeps 3 mantissa bits: with logits spread ~3 the error is ~0.1 nats, not 0 and not 10.
    assert 1e-3 < err.mean() < 0.5, f"mean FP8 error {err.mean():.3g} nats"


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(func.overloadpacket.__name__)
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


def test_torch_backend_never_builds_token_by_vocab_tensor():
    num_tokens, vocab, hidden, chunk_size = 64, 1000, 16, 100
    inputs = random_inputs(num_tokens, vocab, hidden, seed=1)
    hidden_TH = inputs.hidden_TH.requires_grad_()
    weight_VH = inputs.weight_VH.requires_grad_()
    with _LargestOutput() as mode:
        out = fused_linear_logprobs(hidden_TH, weight_VH, inputs.targets_T, chunk_size=chunk_size, return_entropy=True)
        out.logprobs.backward(inputs.grad_T)
    assert "addmm_" in mode.ops, "the dispatch mode did not see the backward"
    bound = max(num_tokens * chunk_size, vocab * hidden, num_tokens * hidden)
    assert mode.largest <= bound < num_tokens * vocab, f"a tensor of {mode.largest} elements appeared"


BAD_INPUTS = [  # (what changes, argument named in the error)
    (dict(hidden=torch.randn(4, 7)), "hidden"),
    (dict(hidden=torch.tensor(1.0)), "hidden"),
    (dict(weight=torch.randn(30)), "weight"),
    (dict(hidden=torch.randn(4, 8).double()), "hidden"),
    (dict(weight=torch.randn(30, 8).bfloat16()), "weight"),
    (dict(targets=torch.zeros(5, dtype=torch.long)), "targets"),
    (dict(targets=torch.zeros(4)), "targets"),
    (dict(targets=torch.tensor([0, 1, 30, 2])), "targets"),
    (dict(targets=torch.tensor([0, -1, 3, 2])), "targets"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature="1"), "temperature"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(backend="cuda"), "backend"),
]


@pytest.mark.parametrize("change,argument", BAD_INPUTS, ids=[f"{a}-{i}" for i, (_, a) in enumerate(BAD_INPUTS)])
def test_bad_input_names_the_argument(change, argument):
    kwargs = dict(hidden=torch.randn(4, 8), weight=torch.randn(30, 8), targets=torch.tensor([0, 1, 29, 2]))
    kwargs.update(change)
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        fused_linear_logprobs(kwargs.pop("hidden"), kwargs.pop("weight"), kwargs.pop("targets"), **kwargs)


def test_fp8_refuses_inputs_that_need_grad():
    hidden, weight, targets = torch.randn(4, 8, requires_grad=True), torch.randn(30, 8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="^fp8: .*forward-only"):
        fused_linear_logprobs(hidden, weight, targets, fp8=True)
    with torch.no_grad():
        fused_linear_logprobs(hidden, weight, targets, fp8=True)


def test_triton_backend_on_cpu_tensors_is_refused(monkeypatch):
    from megatron_sip.kernels import dispatch

    if dispatch.triton_available():
        from megatron_sip.kernels import triton_engine

        monkeypatch.setattr(triton_engine, "INTERPRETED", False)
    with pytest.raises(ValueError, match="^backend: 'triton' needs"):
        fused_linear_logprobs(torch.randn(4, 8), torch.randn(30, 8), torch.tensor([0, 1, 2, 3]), backend="triton")


# --- tensor parallelism: 2 gloo ranks against TP=1 -------------------------------------------

TP_CASE = dict(num_tokens=37, vocab=90, hidden=24, temperature=0.7, chunk_size=16)


def _tp_worker(rank: int, world_size: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        case = TP_CASE
        inputs = random_inputs(case["num_tokens"], case["vocab"], case["hidden"], seed=42)
        kwargs = dict(temperature=case["temperature"], chunk_size=case["chunk_size"], backend="torch")
        full, full_grad_hidden, full_grad_weight = run_fused(inputs, **kwargs)

        vocab_local = case["vocab"] // world_size
        rows = slice(rank * vocab_local, (rank + 1) * vocab_local)
        sharded = inputs._replace(weight_VH=inputs.weight_VH[rows].contiguous())
        tp, tp_grad_hidden, tp_grad_weight = run_fused(sharded, tp_group=dist.group.WORLD, **kwargs)

        torch.testing.assert_close(tp.logprobs, full.logprobs, atol=1e-5, rtol=0)
        torch.testing.assert_close(tp.entropy, full.entropy, atol=1e-5, rtol=0)
        # The contract: every rank gets the full grad_hidden, and its own rows of grad_weight.
        assert_close_scaled(tp_grad_hidden, full_grad_hidden, 1e-5, f"rank {rank} grad_hidden")
        assert_close_scaled(tp_grad_weight, full_grad_weight[rows], 1e-5, f"rank {rank} grad_weight")
        with torch.no_grad():
            tp_fp8 = fused_linear_logprobs(
                sharded.hidden_TH, sharded.weight_VH, inputs.targets_T, tp_group=dist.group.WORLD, fp8=True, **kwargs
            )
            full_fp8 = fused_linear_logprobs(inputs.hidden_TH, inputs.weight_VH, inputs.targets_T, fp8=True, **kwargs)
        torch.testing.assert_close(tp_fp8, full_fp8, atol=1e-5, rtol=0)
    finally:
        dist.destroy_process_group()


def test_tensor_parallel_two_ranks_match_one():
    mp.spawn(_tp_worker, args=(2, free_port()), nprocs=2, join=True)
