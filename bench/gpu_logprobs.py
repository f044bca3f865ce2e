"""GPU check and benchmark of fused_linear_logprobs (one H100, a few minutes).

1. Correctness of the Triton kernels against a float64 reference (fp32 and bf16 inputs, forward
   and backward, entropy) and of the FP8 kernel against the torch emulation of its rounding.
2. FP8 error vs fp32 on random hidden states at the benchmark's H and V (per token, per 128-token
   sequence, per DPO margin = difference of two sequences).
3. Speed and memory at T tokens, V vocabulary, H hidden (default 8192, 131072, 4096), BF16:
   the naive path (logits = h @ W.T, log_softmax in fp32, gather), the same under torch.compile,
   our Triton kernels (BF16 forward, BF16 forward + backward, FP8 forward) and our torch fallback.

FLOP accounting: a forward is one T x V x H matmul, 2TVH flops. "Effective" TFLOPS of forward +
backward count model flops 6TVH (forward 2TVH, grad_hidden 2TVH, grad_weight 2TVH) over the time,
so the recomputation of the logits in our backward (another 2TVH) is not credited. Times are
medians over repeats after warm-up (CUDA events), on random (never zero) inputs; memory is the
peak allocated during one call above what was allocated before it.

The table is printed last. Exit status 1 if a correctness check failed. `--smoke` runs everything
at toy sizes on CPU (with TRITON_INTERPRET=1) to check the script itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_sip.kernels import fused_linear_logprobs  # noqa: E402
from megatron_sip.kernels.reference import logprob_error, random_inputs, reference  # noqa: E402

SEQ_LEN = 128


@dataclass
class Row:
    variant: str
    mode: str
    ms: Optional[float]
    tflops: Optional[float]
    peak_gib: Optional[float]
    note: str = ""


# --- correctness -------------------------------------------------------------------------------


def check_against_reference(name: str, inputs, *, temperature: float, value_atol: float, grad_rel: float) -> bool:
    ref = reference(*inputs, temperature=temperature)
    hidden = inputs.hidden_TH.clone().requires_grad_()
    weight = inputs.weight_VH.clone().requires_grad_()
    out = fused_linear_logprobs(
        hidden, weight, inputs.targets_T, temperature=temperature, backend="triton", return_entropy=True
    )
    out.logprobs.backward(inputs.grad_T)
    value_err = (out.logprobs.double() - ref.logprobs_T).abs().max().item()
    entropy_err = (out.entropy.double() - ref.entropy_T).abs().max().item()
    grad_h_err = _scaled_err(hidden.grad, ref.grad_hidden_TH)
    grad_w_err = _scaled_err(weight.grad, ref.grad_weight_VH)
    ok = max(value_err, entropy_err) <= value_atol and max(grad_h_err, grad_w_err) <= grad_rel
    print(f"check {name:28s} logp {value_err:.2e} entropy {entropy_err:.2e} (atol {value_atol:.0e}) "
          f"grad_h {grad_h_err:.2e} grad_w {grad_w_err:.2e} (x max|ref|, tol {grad_rel:.0e})  "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


def _scaled_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp(min=1e-12)).item()


def check_fp8(inputs, *, atol: float) -> bool:
    args = (inputs.hidden_TH, inputs.weight_VH, inputs.targets_T)
    with torch.no_grad():
        kernel = fused_linear_logprobs(*args, fp8=True, backend="triton")
        emulated = fused_linear_logprobs(*args, fp8=True, backend="torch")
    err = (kernel - emulated).abs().max().item()
    ok = err <= atol
    print(f"check {'fp8 kernel vs emulation':28s} logp {err:.2e} (atol {atol:.0e})  {'PASS' if ok else 'FAIL'}")
    return ok


def correctness(device: torch.device, smoke: bool) -> bool:
    num_tokens, vocab, hidden = (20, 203, 40) if smoke else (1000, 8197, 512)
    ok = check_against_reference(
        "fp32 fwd+bwd (tau 0.7)", random_inputs(num_tokens, vocab, hidden, seed=1, device=device),
        temperature=0.7, value_atol=5e-5, grad_rel=5e-5,
    )
    if not smoke:  # the interpreter cannot multiply bf16 tiles
        ok &= check_against_reference(
            "bf16 fwd+bwd (tau 1.0)",
            random_inputs(num_tokens, vocab, hidden, dtype=torch.bfloat16, seed=2, device=device),
            temperature=1.0, value_atol=2e-4, grad_rel=1.5e-2,
        )
    ok &= check_fp8(random_inputs(num_tokens, vocab, hidden, seed=3, device=device), atol=1e-2)
    return ok


def fp8_error(device: torch.device, num_tokens: int, vocab: int, hidden: int) -> None:
    inputs = random_inputs(num_tokens, vocab, hidden, seed=4, device=device)
    args = (inputs.hidden_TH, inputs.weight_VH, inputs.targets_T)
    with torch.no_grad():
        exact_T = fused_linear_logprobs(*args, backend="torch")  # fp32 matmuls (no TF32)
        approx_T = fused_linear_logprobs(*args, fp8=True, backend="triton")
    e = logprob_error(approx_T, exact_T, seq_len=SEQ_LEN)
    print(f"fp8 error vs fp32, random hidden states, T={num_tokens} V={vocab} H={hidden} (nats): "
          f"token mean|e| {e.token_mean_abs:.4f} bias {e.token_bias:+.4f} max {e.token_max_abs:.3f}; "
          f"{SEQ_LEN}-token sum mean|e| {e.sequence_mean_abs:.3f}; margin mean|e| {e.margin_mean_abs:.3f} "
          f"max {e.margin_max_abs:.3f}")


# --- speed ---------------------------------------------------------------------------------------


def measure(fn: Callable[[], None], device: torch.device, *, reps: int, warmup: int) -> tuple:
    """(median ms, peak extra GiB) of fn() after `warmup` calls."""
    for _ in range(warmup):
        fn()
    peak_gib = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak_gib = (torch.cuda.max_memory_allocated() - base) / 2**30
    times_ms = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times_ms.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times_ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times_ms), peak_gib


def naive_logprobs(hidden_TH: torch.Tensor, weight_VH: torch.Tensor, targets_T: torch.Tensor) -> torch.Tensor:
    """What one writes without a fused kernel: full logits, log_softmax in fp32, gather."""
    logits_TV = hidden_TH @ weight_VH.T
    return torch.log_softmax(logits_TV.float(), dim=-1).gather(-1, targets_T.unsqueeze(-1)).squeeze(-1)


def speed(device: torch.device, args: argparse.Namespace) -> List[Row]:
    T, V, H = args.tokens, args.vocab, args.hidden
    dtype = torch.float32 if args.smoke else torch.bfloat16
    inputs = random_inputs(T, V, H, dtype=dtype, seed=5, device=device)
    hidden = inputs.hidden_TH.clone().requires_grad_()
    weight = inputs.weight_VH.clone().requires_grad_()
    targets, grad = inputs.targets_T, inputs.grad_T
    flops_fwd = 2.0 * T * V * H

    variants = {
        "naive eager": naive_logprobs,
        "ours triton": lambda h, w, y: fused_linear_logprobs(h, w, y, backend="triton"),
        "ours torch (fallback)": lambda h, w, y: fused_linear_logprobs(h, w, y, backend="torch"),
    }
    if not args.skip_compile and device.type == "cuda":
        variants["naive torch.compile"] = torch.compile(naive_logprobs)

    rows = []
    for name, fn in variants.items():
        slow = name.startswith("ours torch")
        reps, warmup = (3, 1) if slow or args.smoke else (args.reps, 3)

        def forward(fn=fn):
            with torch.no_grad():
                fn(hidden, weight, targets)

        def forward_backward(fn=fn):
            hidden.grad = weight.grad = None
            fn(hidden, weight, targets).backward(grad)

        for mode, call, flops in (("fwd", forward, flops_fwd), ("fwd+bwd", forward_backward, 3 * flops_fwd)):
            rows.append(_timed_row(name, mode, call, flops, device, reps=reps, warmup=warmup))

    def forward_fp8():
        with torch.no_grad():
            fused_linear_logprobs(hidden.detach(), weight.detach(), targets, fp8=True, backend="triton")

    reps = 3 if args.smoke else args.reps
    rows.append(_timed_row("ours triton FP8", "fwd", forward_fp8, flops_fwd, device, reps=reps, warmup=1,
                           note="incl. e4m3 quantization of h and W"))
    return rows


def _timed_row(name, mode, call, flops, device, *, reps, warmup, note="") -> Row:
    try:
        ms, peak = measure(call, device, reps=reps, warmup=warmup)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return Row(name, mode, None, None, None, "out of memory")
    # A benchmark must still print its table when one variant fails (e.g. a torch.compile error).
    except Exception as exc:  # noqa: BLE001
        return Row(name, mode, None, None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}")
    return Row(name, mode, ms, flops / (ms * 1e-3) / 1e12, peak, note)


def print_table(rows: List[Row], args: argparse.Namespace, device_name: str) -> None:
    print()
    print(f"T={args.tokens} V={args.vocab} H={args.hidden} {'fp32' if args.smoke else 'bf16'} on {device_name}; "
          "fwd TFLOPS = 2TVH/t, fwd+bwd effective TFLOPS = 6TVH/t")
    print(f"{'variant':24s} {'mode':8s} {'ms':>9s} {'TFLOPS':>8s} {'peak GiB':>9s}  note")
    for r in rows:
        ms = f"{r.ms:9.2f}" if r.ms is not None else f"{'-':>9s}"
        tf = f"{r.tflops:8.1f}" if r.tflops is not None else f"{'-':>8s}"
        peak = f"{r.peak_gib:9.2f}" if r.peak_gib is not None else f"{'-':>9s}"
        print(f"{r.variant:24s} {r.mode:8s} {ms} {tf} {peak}  {r.note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=131072)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile baseline")
    parser.add_argument("--smoke", action="store_true", help="toy sizes; runs on CPU under TRITON_INTERPRET=1")
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.vocab, args.hidden = 256, 300, 32
        device = torch.device("cpu")
        device_name = "CPU (Triton interpreter)"
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --smoke (and TRITON_INTERPRET=1) to test the script on CPU")
            return 2
        device = torch.device("cuda")
        device_name = torch.cuda.get_device_name(device)
    import triton

    print(f"torch {torch.__version__}, triton {triton.__version__}, {device_name}")
    ok = correctness(device, args.smoke)
    fp8_error(device, 2048 if not args.smoke else 256, args.vocab, args.hidden)
    rows = speed(device, args)
    print_table(rows, args, device_name)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
