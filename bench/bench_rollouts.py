"""CPU benchmark: rollout generation with the shared-prefix KV cache against full recompute.

Model: examples/tiny_cpu.yaml (2 layers, hidden 64, SmolLM2's 49152-token vocabulary) with
model.seq_length=640, one process, fp32. Workload (the paper's): P prefixes of 512 random tokens,
K=16 samples of N=128 new tokens each, temperature 1, top-p 1.

- `generator`: `RolloutGenerator.generate` (prefix encoded once, its cache copied K-fold, one
  cached decode step per token).
- `recompute`: no cache. For every new token the whole sequence (prefix + tokens so far) of all
  P*K rows runs through the model again. It is given the benefit of computing logits at the last
  position only (a throwaway static context per step makes Megatron skip the other positions:
  nothing is reused between steps), and it samples with the same code and the same uniforms.

Both produce P*K*N tokens (no EOD: no row stops early).
The two run alternately (generator, recompute, generator, ...) after a short warm-up, and the
speedup is the median of per-pair time ratios, so load from other processes hits both alike.
Token agreement between the two is printed as a correctness check (float rounding differs
between cached and recomputed attention, so an occasional different draw is possible).

One torch thread by default: on this project's 2-core machines the cores are shared with test
runs and other processes, and oversubscribed OpenMP threads make the many small ops of a decode
step erratic (seconds of spread between identical runs). `--threads 0` keeps torch's default.

The last line prints `speedup=<recompute time / generator time>x` (goal >= 5).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from megatron_sip.config import load_config  # noqa: E402
from megatron_sip.model.build import build_gpt_model  # noqa: E402
from megatron_sip.model.init import init_layout_invariant  # noqa: E402
from megatron_sip.parallel import destroy_parallel, init_parallel  # noqa: E402
from megatron_sip.rollout import RolloutGenerator, SamplingParams, prefix_uniforms, sample_next  # noqa: E402
from megatron_sip.rollout import mcore  # noqa: E402


def build_model(args: argparse.Namespace):
    cfg = load_config(REPO_ROOT / "examples" / "tiny_cpu.yaml",
                      [f"model.seq_length={args.prefix_len + args.new_tokens}"])
    ctx = init_parallel(cfg.model, seed=cfg.train.seed)
    model = build_gpt_model(cfg.model, pre_process=True, post_process=True)
    init_layout_invariant(model, cfg.model, seed=cfg.train.seed, tp_rank=0, tp_size=1)
    return cfg, ctx, model


@torch.no_grad()
def full_recompute(model, prefixes_PL: torch.Tensor, *, num_samples: int, new_tokens: int, seed: int,
                   vocab_size: int) -> torch.Tensor:
    """[P*K, N] tokens sampled by re-running the whole sequence for every new token."""
    params = SamplingParams()
    uniforms_BN = torch.cat([prefix_uniforms(seed, p, num_samples, new_tokens) for p in range(len(prefixes_PL))])
    rows_BS = prefixes_PL.repeat_interleave(num_samples, dim=0)
    model.eval()
    with mcore.inference_scope():
        for step in range(new_tokens):
            length = rows_BS.shape[1]
            context = mcore.new_static_context(max_batch_size=rows_BS.shape[0], max_sequence_length=length)
            positions_BS = torch.arange(length).expand(rows_BS.shape[0], -1)
            logits_BSV = model(rows_BS, positions_BS, None, **mcore.forward_kwargs(model, context))
            sampled = sample_next(logits_BSV[:, -1, :], uniforms_BN[:, step], params, vocab_size=vocab_size)
            rows_BS = torch.cat([rows_BS, sampled.tokens_B[:, None]], dim=1)
    return rows_BS[:, prefixes_PL.shape[1]:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefixes", type=int, default=1, help="P")
    parser.add_argument("--prefix-len", type=int, default=512)
    parser.add_argument("--samples", type=int, default=16, help="K")
    parser.add_argument("--new-tokens", type=int, default=128, help="N")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: see the module docstring; 0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg, ctx, model = build_model(args)
    vocab_size = cfg.model.vocab_size
    # No EOD: every row runs to N tokens, as in the recompute loop.
    generator = RolloutGenerator([model], ctx, eod_id=None, vocab_size=vocab_size)
    prefixes_PL = torch.randint(0, vocab_size, (args.prefixes, args.prefix_len),
                                generator=torch.Generator().manual_seed(0))
    num_tokens = args.prefixes * args.samples * args.new_tokens

    def run_generator() -> torch.Tensor:
        batch = generator.generate(prefixes_PL.tolist(), num_samples=args.samples, max_new_tokens=args.new_tokens,
                                   seed=1)
        return batch.tokens_PKN.reshape(-1, args.new_tokens)

    def run_recompute() -> torch.Tensor:
        return full_recompute(model, prefixes_PL, num_samples=args.samples, new_tokens=args.new_tokens, seed=1,
                              vocab_size=vocab_size)

    print(f"tiny_cpu model (H={cfg.model.hidden_size}, layers={cfg.model.num_layers}, V={vocab_size}), "
          f"P={args.prefixes} prefix={args.prefix_len} K={args.samples} N={args.new_tokens}, fp32, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    generator.generate(prefixes_PL[:, :32].tolist(), num_samples=args.samples, max_new_tokens=4)  # warm-up
    seconds = {"generator": [], "recompute": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, run in (("generator", run_generator), ("recompute", run_recompute)):
            start = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - start)
    agreement = (outputs["generator"] == outputs["recompute"]).float().mean().item()

    print(f"{'variant':10s} {'median s':>9s} {'tokens/s':>10s}  all runs (s)")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:10s} {median:9.2f} {num_tokens / median:10.1f}  " + " ".join(f"{v:.2f}" for v in values))
    print(f"token agreement generator vs recompute: {agreement:.4f}")
    destroy_parallel()
    speedup = statistics.median(r / g for g, r in zip(seconds["generator"], seconds["recompute"]))
    print(f"speedup={speedup:.1f}x")


if __name__ == "__main__":
    main()
