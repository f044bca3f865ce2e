"""`megatron-sip sample`: print the samples the trainer would see, as JSONL."""

from __future__ import annotations

import argparse
import json
import sys

from megatron_sip.commands.common import add_config_arguments, config_from_args

HELP = "Print the (prefix, suffix, rewrite) samples a data-parallel rank would train on, as JSONL."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--count", type=int, required=True, help="samples to print")
    parser.add_argument("--start", type=int, default=0,
                        help="consumed_samples to start from (global, over all DP ranks)")
    parser.add_argument("--dp-rank", type=int, default=0, help="data-parallel rank")
    parser.add_argument("--dp-size", type=int, default=1, help="data-parallel size")
    parser.add_argument("--tail-tokens", type=int, default=24,
                        help="prefix tokens shown in prefix_tail_text")


def run(args: argparse.Namespace) -> int:
    from megatron_sip.data.codec import load_codec
    from megatron_sip.data.preview import preview_records
    from megatron_sip.errors import InputError

    if args.count < 0 or args.start < 0 or args.tail_tokens < 0:
        raise InputError("--count, --start and --tail-tokens must be >= 0")
    if not 0 <= args.dp_rank < args.dp_size:
        raise InputError(f"--dp-rank {args.dp_rank} is not in [0, --dp-size={args.dp_size})")
    cfg = config_from_args(args)
    codec = load_codec(cfg.data.tokenizer, cfg.data.eod_token)
    for record in preview_records(cfg.data, suffix_len=cfg.sip.suffix_len, vocab_size=cfg.model.vocab_size,
                                  micro_batch_size=cfg.train.micro_batch_size, codec=codec,
                                  count=args.count, start=args.start,
                                  dp_rank=args.dp_rank, dp_size=args.dp_size,
                                  tail_tokens=args.tail_tokens):
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0
