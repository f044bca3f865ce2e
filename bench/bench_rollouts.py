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

`--shape smollm2`: the generator against Hugging Face `transformers`' `generate` on the
SmolLM2-135M shape (30 layers, hidden 576, 9 heads in 3 KV groups, ffn 1536, vocabulary 49152,
RMSNorm, SwiGLU, rope theta 100000, tied embeddings) with random weights: a `LlamaForCausalLM`
is drawn, then the same weights converted into the GPTModel by the project's converter
(`model/hf_llama.py`); the max |logit difference| of the two models on the prefix is printed
as a check. Same prefixes, K samples per prefix, temperature 1, top-p 1, no top-k, fp32, one
torch thread; `generate(do_sample=True, num_return_sequences=K, use_cache=True)` without EOS (all
samples run to N, as the generator's do). Settings (`--settings LxKxN ...`, P=`--prefixes`):
256x8x64 and the paper's 512x16x128. Per setting the two alternate `--repeats` times; the ratio
is the median of per-pair time ratios. Last line: `speed_vs_hf=<min over settings>` (goal >= 1.2).
`--engine static` times the earlier loop instead of the default engine choice.
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

from megatron_sip.compat.versions import forward_kwargs, inference_scope  # noqa: E402
from megatron_sip.config import load_config  # noqa: E402
from megatron_sip.model.build import build_gpt_model  # noqa: E402
from megatron_sip.model.init import init_layout_invariant  # noqa: E402
from megatron_sip.parallel import destroy_parallel, init_parallel  # noqa: E402
from megatron_sip.rollout import RolloutGenerator, SamplingParams, prefix_uniforms, sample_next  # noqa: E402
from megatron_sip.rollout import mcore  # noqa: E402

SMOLLM2_SHAPE = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                     num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                     rms_norm_eps=1e-5, tie_word_embeddings=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 100000.0})


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
    with inference_scope():
        for step in range(new_tokens):
            length = rows_BS.shape[1]
            context = mcore.new_static_context(max_batch_size=rows_BS.shape[0], max_sequence_length=length)
            positions_BS = torch.arange(length).expand(rows_BS.shape[0], -1)
            logits_BSV = model(rows_BS, positions_BS, None, **forward_kwargs(model, context))
            sampled = sample_next(logits_BSV[:, -1, :], uniforms_BN[:, step], params, vocab_size=vocab_size)
            rows_BS = torch.cat([rows_BS, sampled.tokens_B[:, None]], dim=1)
    return rows_BS[:, prefixes_PL.shape[1]:]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("tiny", "smollm2"), default="tiny",
                        help="tiny: vs full recompute; smollm2: vs transformers' generate")
    parser.add_argument("--prefixes", type=int, default=1, help="P")
    parser.add_argument("--prefix-len", type=int, default=512)
    parser.add_argument("--samples", type=int, default=16, help="K")
    parser.add_argument("--new-tokens", type=int, default=128, help="N")
    parser.add_argument("--settings", nargs="+", default=["256x8x64", "512x16x128"],
                        help="smollm2: prefix length x K x N, one per setting")
    parser.add_argument("--engine", default="auto", help="rollout engine: auto, layers or static")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: see the module docstring; 0 = torch's default)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shape == "smollm2":
        compare_with_hf(args)
    else:
        compare_with_recompute(args)


def compare_with_recompute(args: argparse.Namespace) -> None:
    cfg, ctx, model = build_model(args)
    vocab_size = cfg.model.vocab_size
    # No EOD: every row runs to N tokens, as in the recompute loop.
    generator = RolloutGenerator([model], ctx, eod_id=None, vocab_size=vocab_size, engine=args.engine)
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
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, engine {generator.engine.name}")
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



# -- --shape smollm2: against transformers' generate ------------------------------------------------
def parse_setting(text: str) -> tuple:
    prefix_len, samples, new_tokens = (int(v) for v in text.lower().split("x"))
    return prefix_len, samples, new_tokens


def build_smollm2_pair(max_positions: int):
    """A random-weight SmolLM2-135M-shaped LlamaForCausalLM and the same weights in a GPTModel."""
    import dataclasses

    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_sip.model.convert_hf import load_full_state
    from megatron_sip.model.hf_llama import hf_to_megatron, llama_shape, model_config_from_hf

    hf_config = {**SMOLLM2_SHAPE, "max_position_embeddings": max_positions}
    torch.manual_seed(0)
    hf_model = LlamaForCausalLM(LlamaConfig(**hf_config)).eval()
    hf_model.generation_config.eos_token_id = None  # no early stop: every sample runs to N
    hf_model.generation_config.pad_token_id = 0
    cfg = model_config_from_hf(hf_config, seq_length=max_positions)
    cfg = dataclasses.replace(cfg, transformer_impl="local", transformer_overrides={"perform_initialization": False})
    ctx = init_parallel(cfg, seed=0)
    model = build_gpt_model(cfg, pre_process=True, post_process=True).eval()
    load_full_state(model, hf_to_megatron(hf_model.state_dict(), cfg, llama_shape(hf_config)), tp_rank=0, tp_size=1)
    return hf_model, cfg, ctx, model


@torch.no_grad()
def max_logit_difference(hf_model, model, tokens_PL: torch.Tensor) -> float:
    positions_PL = torch.arange(tokens_PL.shape[1]).expand_as(tokens_PL)
    ours = model(tokens_PL, positions_PL, None)[..., :SMOLLM2_SHAPE["vocab_size"]]
    return (ours - hf_model(tokens_PL).logits).abs().max().item()


def time_setting(hf_model, generator, prefixes_PL: torch.Tensor, samples: int, new_tokens: int,
                 repeats: int) -> dict:
    def run_generator() -> None:
        generator.generate(prefixes_PL.tolist(), num_samples=samples, max_new_tokens=new_tokens, seed=1)

    @torch.no_grad()
    def run_hf() -> None:
        out = hf_model.generate(prefixes_PL, attention_mask=torch.ones_like(prefixes_PL), do_sample=True,
                                num_return_sequences=samples, max_new_tokens=new_tokens, temperature=1.0,
                                top_k=0, top_p=1.0, use_cache=True)
        assert out.shape == (prefixes_PL.shape[0] * samples, prefixes_PL.shape[1] + new_tokens)

    seconds = {"generator": [], "hf_generate": []}
    for _ in range(repeats):
        for name, run in (("generator", run_generator), ("hf_generate", run_hf)):
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def compare_with_hf(args: argparse.Namespace) -> None:
    settings = [parse_setting(text) for text in args.settings]
    hf_model, cfg, ctx, model = build_smollm2_pair(max(length + new for length, _, new in settings))
    generator = RolloutGenerator([model], ctx, eod_id=None, vocab_size=cfg.vocab_size, engine=args.engine)
    prompts = torch.Generator().manual_seed(0)
    check_PL = torch.randint(0, cfg.vocab_size, (1, 64), generator=prompts)
    print(f"SmolLM2-135M shape, random weights, fp32, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"engine {generator.engine.name} ({generator.engine.reason}); max |logit difference| vs transformers "
          f"{max_logit_difference(hf_model, model, check_PL):.2e}")
    generator.generate(check_PL[:, :16].tolist(), num_samples=2, max_new_tokens=4)  # warm-up
    time_setting(hf_model, generator, check_PL[:, :16], 2, 4, 1)
    print(f"{'setting':28s} {'generator s':>12s} {'tok/s':>8s} {'generate s':>11s} {'tok/s':>8s} {'ratio':>6s}")
    ratios = []
    for prefix_len, samples, new_tokens in settings:
        prefixes_PL = torch.randint(0, cfg.vocab_size, (args.prefixes, prefix_len), generator=prompts)
        seconds = time_setting(hf_model, generator, prefixes_PL, samples, new_tokens, args.repeats)
        ratio = statistics.median(h / g for g, h in zip(seconds["generator"], seconds["hf_generate"]))
        ratios.append(ratio)
        num_tokens = args.prefixes * samples * new_tokens
        ours, theirs = statistics.median(seconds["generator"]), statistics.median(seconds["hf_generate"])
        print(f"P={args.prefixes} L={prefix_len} K={samples} N={new_tokens}".ljust(28)
              + f" {ours:12.2f} {num_tokens / ours:8.1f} {theirs:11.2f} {num_tokens / theirs:8.1f} {ratio:6.2f}")
    destroy_parallel()
    print(f"speed_vs_hf={min(ratios):.2f}")


if __name__ == "__main__":
    main()
