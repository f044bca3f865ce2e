"""`megatron-sip rewrite`: rewrite the suffixes of a run's samples ahead of training (resumable)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from typing import Iterator

from megatron_sip.commands.common import add_config_arguments, config_from_args

HELP = ("Rewrite the suffixes a run will train on, ahead of training; results go to the rewrite "
        "store beside each dataset. Resumable; exit status 3 when some rewrites failed (rerun to retry them).")

REWRITER_MODULE = "megatron_sip.judges.rewriter"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--count", type=int, default=None,
                        help="samples to cover (default: train.steps * train.global_batch_size)")
    parser.add_argument("--batch-size", type=int, default=16, help="requests per rewriter call")
    parser.add_argument("--shard-size", type=int, default=512,
                        help="entries per committed shard (what a crash can cost)")
    parser.add_argument("--judge", action="store_true",
                        help="also judge each suffix and its rewrite with the `judge` section (the judgments "
                             "that involve no rollout) and store them; training then asks the judges only "
                             "about rollouts (the store must be new or have been judged by the same judge)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from megatron_sip.data.codec import load_codec
    from megatron_sip.data.rewrite_job import run_rewrite_job
    from megatron_sip.errors import EXIT_PARTIAL, InputError

    if (args.count is not None and args.count < 0) or args.batch_size < 1 or args.shard_size < 1:
        raise InputError("--count must be >= 0, --batch-size and --shard-size >= 1")
    cfg = config_from_args(args)
    codec = load_codec(cfg.data.tokenizer, cfg.data.eod_token)
    with open_rewrite_fn(cfg, codec) as rewrite_fn, open_policy_free_judge(cfg, args.judge) as judge, \
            tqdm(unit=" samples", desc="rewrite", file=sys.stderr, disable=args.no_progress,
                 dynamic_ncols=True) as bar:
        stats = run_rewrite_job(cfg.data, suffix_len=cfg.sip.suffix_len, vocab_size=cfg.model.vocab_size,
                                num_samples=cfg.train.num_samples if args.count is None else args.count,
                                codec=codec, rewrite_fn=rewrite_fn, judge=judge,
                                batch_size=args.batch_size, shard_size=args.shard_size,
                                on_progress=bar.update)
    print(f"{stats.num_samples} samples: {stats.num_written} rewrites written, "
          f"{stats.num_already_stored} already stored, {stats.num_failed} failed "
          "(rerun to retry them)", file=sys.stderr)
    return 0 if stats.num_failed == 0 else EXIT_PARTIAL


@contextlib.contextmanager
def open_policy_free_judge(cfg, wanted: bool) -> Iterator:
    """The `judge` section as the job's StaticJudge (judges/policy_free.py), or None."""
    if not wanted:
        yield None
        return
    from megatron_sip.judges.policy_free import PolicyFreeJudge
    from megatron_sip.judges.service import JudgeService

    with JudgeService.open(cfg.judge) as service:
        yield PolicyFreeJudge(service, cfg.judge.criteria)


@contextlib.contextmanager
def open_rewrite_fn(cfg, codec) -> Iterator:
    """The `rewriter` section's client as a `RewriteFn` (megatron_sip/data/rewrite_job.py).

    The client cuts answers to N tokens of the policy tokenizer; the job cuts again after its own
    tokenization, so a boundary token that re-tokenizes differently cannot make a rewrite longer.
    """
    module = _rewriter_module()
    from megatron_sip.judges.types import RewriteRequest as ClientRequest

    with module.Rewriter.open(cfg.rewriter, tokenizer=codec.tokenizer) as rewriter:
        def rewrite_fn(requests):
            return rewriter([ClientRequest(prefix=r.prefix_text, suffix=r.suffix_text,
                                           suffix_len_tokens=r.suffix_len) for r in requests])

        yield rewrite_fn


def _rewriter_module():
    from megatron_sip.errors import ConfigError

    try:
        return importlib.import_module(REWRITER_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in (REWRITER_MODULE, "megatron_sip.judges"):
            raise
        raise ConfigError("rewriter", f"no rewriter client in this installation ({REWRITER_MODULE} "
                          "is missing)") from exc
