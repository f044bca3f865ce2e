"""`megatron-sip convert`: Hugging Face Llama checkpoints <-> Megatron checkpoints, and a check
of a conversion against transformers (see megatron_sip/model/convert_hf.py for the format)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Convert Hugging Face Llama checkpoints to Megatron checkpoints and back; verify a conversion."

_DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_TOLERANCE = 2e-4  # fp32 logits; SmolLM2-135M measured 1.0e-4 (TP 1) and 1.4e-4 (TP 2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", required=True, metavar="DIRECTION")
    to_megatron = sub.add_parser("hf-to-megatron",
                                 help="HF Llama (directory, .gguf or 'embedded') -> Megatron checkpoint")
    to_megatron.add_argument("--hf", required=True, metavar="SRC",
                             help="HF model directory (config.json + safetensors), a .gguf file, "
                                  "or 'embedded' (SmolLM2)")
    to_megatron.add_argument("--output", required=True, type=Path, help="new folder for the Megatron checkpoint")
    to_megatron.add_argument("--target-tp", type=int, default=1, metavar="N",
                             help="tensor-parallel size to train with: KV groups are zero-padded until N divides them")
    to_megatron.add_argument("--seq-length", type=int, default=None,
                             help="model.seq_length to record (default: the HF max_position_embeddings)")
    to_megatron.add_argument("--dtype", choices=_DTYPES, default="float32", help="weights dtype (default float32)")

    to_hf = sub.add_parser("megatron-to-hf",
                           help="Megatron checkpoint (converted or a run's step_N) -> HF Llama directory")
    to_hf.add_argument("--checkpoint", required=True, type=Path,
                       help="converted checkpoint folder, or run.output_dir/checkpoints/step_N")
    to_hf.add_argument("--output", required=True, type=Path, help="new folder for the HF model")
    to_hf.add_argument("--model-config", type=Path, default=None,
                       help="YAML with the model section (default: model.yaml beside the checkpoint, "
                            "or the run's config.yaml)")
    to_hf.add_argument("--reference", type=Path, default=None,
                       help="converted checkpoint whose hf_conversion.json (HF config, padding, tokenizer) applies "
                            "(default: the checkpoint's own, or the run's model.init_checkpoint)")
    to_hf.add_argument("--tokenizer", default=None, metavar="SRC",
                       help="tokenizer to save beside the weights: 'embedded', a .gguf file or an HF directory "
                            "(default: the conversion's source)")
    to_hf.add_argument("--dtype", choices=_DTYPES, default="bfloat16", help="weights dtype (default bfloat16)")

    verify = sub.add_parser("verify", help="compare a Megatron checkpoint's logits with the HF model's (fp32)")
    verify.add_argument("--checkpoint", required=True, type=Path, help="converted checkpoint folder")
    verify.add_argument("--hf", required=True, metavar="SRC", help="the HF model it should equal")
    verify.add_argument("--tp", type=int, default=None,
                        help="tensor-parallel size (default: the number of processes; run under torchrun for > 1)")
    verify.add_argument("--model-config", type=Path, default=None,
                        help="YAML with the model section (default: model.yaml)")
    verify.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest accepted |logit difference| (default {DEFAULT_TOLERANCE})")
    verify.add_argument("--num-sequences", type=int, default=2, help="random token sequences compared")
    verify.add_argument("--seq-length", type=int, default=32, help="tokens per sequence")


def run(args: argparse.Namespace) -> int:
    from megatron_sip.logging_utils import setup_logging

    setup_logging("INFO")
    directions = {"hf-to-megatron": _hf_to_megatron, "megatron-to-hf": _megatron_to_hf, "verify": _verify}
    return directions[args.direction](args)


def _model_config(path):
    from megatron_sip.model.convert_hf import read_model_yaml

    return read_model_yaml(path) if path is not None else None


def _hf_to_megatron(args: argparse.Namespace) -> int:
    from megatron_sip.errors import InputError
    from megatron_sip.model.convert_hf import MODEL_YAML, convert_hf_to_megatron

    if args.target_tp < 1:
        raise InputError(f"--target-tp must be >= 1, got {args.target_tp}")
    cfg = convert_hf_to_megatron(args.hf, args.output, target_tp=args.target_tp, seq_length=args.seq_length,
                                 dtype=args.dtype)
    print(f"wrote {args.output}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads "
          f"in {cfg.num_query_groups} KV groups; use defaults: [{args.output / MODEL_YAML}] in a run config")
    return 0


def _megatron_to_hf(args: argparse.Namespace) -> int:
    from megatron_sip.model.convert_hf import convert_megatron_to_hf

    convert_megatron_to_hf(args.checkpoint, args.output, model_cfg=_model_config(args.model_config),
                           reference=args.reference, tokenizer=args.tokenizer, dtype=args.dtype)
    print(f"wrote {args.output} (Hugging Face Llama, {args.dtype})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from megatron_sip.model.hf_verify import verify_against_hf
    from megatron_sip.parallel import launch_env

    env = launch_env()
    result = verify_against_hf(args.checkpoint, args.hf, tensor_parallel_size=args.tp or env.world_size,
                               model_cfg=_model_config(args.model_config), num_sequences=args.num_sequences,
                               seq_length=args.seq_length)
    ok = result.max_abs_diff <= args.tolerance
    if env.rank == 0:
        print(f"max |logit difference| {result.max_abs_diff:.3e} over {result.num_sequences}x{result.seq_length} "
              f"tokens at TP={result.tensor_parallel_size}: {'OK' if ok else 'FAILED'} "
              f"(tolerance {args.tolerance:.1e})")
    return 0 if ok else 1
