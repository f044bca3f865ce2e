"""GPU check of the rollout engines: the `static` loop, the `layers` engine eager, and the
`layers` engine with its decode step replayed as a CUDA graph, on one GPU.

NOT RUN YET (written without a GPU; docs/rollouts.md). Needs megatron-core importable; run by
`bench/gpu_check.sh`, which skips it otherwise.

Model: the SmolLM2-135M shape (30 layers, hidden 576, 9 heads in 3 KV groups, vocabulary 49152)
with layout-invariant random weights, local layer spec, `--dtype` (default bfloat16). Workload:
one prefix of `--prefix-len` tokens, K samples of N tokens, temperature 1, no EOD.
Checks first: with greedy decoding each engine's tokens against the static loop's (agreement
share; bf16 rounding may flip a near-tie and change a row's tail) and the largest difference of
their model log-probs over the shared first token. Then tokens/s of each, alternating
`--repeats` times (medians). Last line: `graphs_vs_static=X layers_vs_static=Y`.
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

from megatron_sip.model.build import build_gpt_model  # noqa: E402
from megatron_sip.model.config import ModelConfig  # noqa: E402
from megatron_sip.model.init import init_layout_invariant  # noqa: E402
from megatron_sip.parallel import destroy_parallel, init_parallel  # noqa: E402
from megatron_sip.rollout import RolloutGenerator  # noqa: E402

VARIANTS = {"static": dict(engine="static"), "layers": dict(engine="layers", cuda_graphs=False),
            "layers+graphs": dict(engine="layers", cuda_graphs=True)}


def smollm2_shape(seq_length: int, dtype: str) -> ModelConfig:
    return ModelConfig(num_layers=30, hidden_size=576, ffn_hidden_size=1536, num_attention_heads=9,
                       num_query_groups=3, kv_channels=64, vocab_size=49152, seq_length=seq_length,
                       normalization="RMSNorm", activation="silu", gated_linear_unit=True, rotary_base=100000,
                       share_embeddings_and_output_weights=True, transformer_impl="local", params_dtype=dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix-len", type=int, default=512)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_rollouts.py needs a CUDA device")
    cfg = smollm2_shape(args.prefix_len + args.new_tokens, args.dtype)
    ctx = init_parallel(cfg, seed=0)
    model = build_gpt_model(cfg, pre_process=True, post_process=True)
    init_layout_invariant(model, cfg, seed=0, tp_rank=0, tp_size=1)
    model = model.to(getattr(torch, args.dtype))
    generators = {name: RolloutGenerator([model], ctx, eod_id=None, vocab_size=cfg.vocab_size, **kwargs)
                  for name, kwargs in VARIANTS.items()}
    prefix = torch.randint(0, cfg.vocab_size, (1, args.prefix_len), generator=torch.Generator().manual_seed(0)).tolist()
    print(f"{torch.cuda.get_device_name()}, SmolLM2-135M shape, {args.dtype}, prefix {args.prefix_len}, "
          f"K={args.samples}, N={args.new_tokens}; engines: "
          + ", ".join(f"{n}={g.engine.name}/{g.engine.reason}" for n, g in generators.items()))
    check_agreement(generators, prefix, args)
    seconds = {name: [] for name in generators}
    for _ in range(args.repeats):
        for name, generator in generators.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            generator.generate(prefix, num_samples=args.samples, max_new_tokens=args.new_tokens, seed=1)
            torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
    num_tokens = args.samples * args.new_tokens
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:14s} {median:8.3f} s {num_tokens / median:10.1f} tokens/s  runs " + " ".join(f"{v:.3f}" for v in values))
    static = statistics.median(seconds["static"])
    destroy_parallel()
    print(f"graphs_vs_static={static / statistics.median(seconds['layers+graphs']):.2f} "
          f"layers_vs_static={static / statistics.median(seconds['layers']):.2f}")


def check_agreement(generators: dict, prefix: list, args: argparse.Namespace) -> None:
    greedy = {name: g.generate(prefix, num_samples=2, max_new_tokens=min(args.new_tokens, 32), temperature=0.0)
              for name, g in generators.items()}
    reference = greedy["static"]
    for name, batch in greedy.items():
        agreement = (batch.tokens_PKN == reference.tokens_PKN).float().mean().item()
        first_diff = (batch.logprobs_model_PKN[..., 0] - reference.logprobs_model_PKN[..., 0]).abs().max().item()
        print(f"greedy {name:14s} token agreement with static {agreement:.3f}, first-token log-prob diff {first_diff:.2e}")


if __name__ == "__main__":
    main()
