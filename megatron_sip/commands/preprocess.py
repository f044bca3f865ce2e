"""`megatron-sip preprocess`: JSONL -> Megatron-Core indexed dataset (.bin/.idx)."""

from __future__ import annotations

import argparse
import sys

from megatron_sip.data.jsonl import DEFAULT_MAX_LINE_BYTES
from megatron_sip.embedded import EMBEDDED_NAME

HELP = "Tokenize JSONL documents into a Megatron-Core indexed dataset (P.bin/P.idx), EOD appended."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="F.jsonl[,G.jsonl]",
                        help="JSONL files, one document per line, concatenated in order")
    parser.add_argument("--output-prefix", required=True, metavar="P",
                        help="writes P.bin and P.idx (under temporary names until complete)")
    parser.add_argument("--json-key", default="text", help="key holding the document text")
    parser.add_argument("--tokenizer", default=EMBEDDED_NAME,
                        help="Hugging Face tokenizer: 'embedded' (SmolLM2) or a local path")
    parser.add_argument("--eod-token", default=None,
                        help="end-of-document token (default: <|endoftext|> if in the vocabulary, "
                             "else the tokenizer's eos)")
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    parser.add_argument("--skip-bad-lines", action="store_true",
                        help="skip and count bad lines instead of stopping at the first")
    parser.add_argument("--max-line-bytes", type=int, default=DEFAULT_MAX_LINE_BYTES, metavar="B",
                        help=f"longer lines are bad lines, never read whole (default {DEFAULT_MAX_LINE_BYTES})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing dataset at --output-prefix")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from megatron_sip.data.codec import load_codec
    from megatron_sip.data.jsonl import check_inputs
    from megatron_sip.data.preprocess import check_output_free, preprocess_jsonl, split_inputs
    from megatron_sip.errors import InputError

    if args.workers < 1 or args.max_line_bytes < 1:
        raise InputError(f"--workers and --max-line-bytes must be >= 1, got {args.workers}, {args.max_line_bytes}")
    inputs = split_inputs(args.input)
    check_inputs(inputs)  # before the tokenizer loads: a typo fails in a blink
    if not args.force:
        check_output_free(args.output_prefix)
    codec = load_codec(args.tokenizer, args.eod_token, key="--tokenizer")
    with tqdm(unit=" docs", desc="preprocess", file=sys.stderr, disable=args.no_progress,
              dynamic_ncols=True) as bar:
        stats = preprocess_jsonl(inputs, args.output_prefix, codec=codec, json_key=args.json_key,
                                 num_workers=args.workers, skip_bad_lines=args.skip_bad_lines,
                                 tokenizer_spec=args.tokenizer, overwrite=args.force,
                                 max_line_bytes=args.max_line_bytes, on_progress=bar.update)
    rate = stats.num_docs / max(stats.seconds, 1e-9)
    print(f"wrote {args.output_prefix}.bin/.idx: {stats.num_docs} documents, {stats.num_tokens} "
          f"tokens (EOD '{codec.eod_token}' = {codec.eod_id}), {rate:.0f} docs/s", file=sys.stderr)
    if stats.num_bad_lines:
        print(f"skipped {stats.num_bad_lines} bad lines; the first: {stats.first_bad_line}",
              file=sys.stderr)
    return 0
