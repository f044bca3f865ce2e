"""`megatron-sip evaluate`: judge a checkpoint's greedy generations on held-out prefixes (against a
baseline's), measure held-out NLL, and write report.json, report.md and plots."""

from __future__ import annotations

import argparse
import dataclasses

from megatron_sip.commands.common import add_config_arguments, config_from_args

HELP = "Evaluate a checkpoint: win rate vs a baseline, safety, factuality, held-out NLL (one process)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", metavar="DIR",
                        help="run directory (its latest checkpoint) or checkpoint directory to evaluate")
    parser.add_argument("--baseline", metavar="DIR",
                        help="run or checkpoint directory to compare against (pairwise quality win rate)")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="where the report goes (default: <run>/eval/<checkpoint name>)")
    parser.add_argument("--num-prefixes", type=int, metavar="M", help="held-out samples (default 1000)")
    parser.add_argument("--seeds", type=int, metavar="S", help="judge votes per judgment (default 8)")
    parser.add_argument("--judge-temperature", type=float, metavar="T", help="judge temperature (default 0.7)")
    parser.add_argument("--temperature", type=float, metavar="T",
                        help="decoding of the evaluated models: 0 = greedy (default), > 0 = sampled")
    parser.add_argument("--pairs", metavar="FILE",
                        help="JSONL of {prefix, chosen, rejected}: preference accuracy of each model")
    parser.add_argument("--batch-size", type=int, metavar="B", help="prefixes per pass (default 16)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import functools
    import sys

    from tqdm import tqdm

    from megatron_sip.evaluate.config import EvalConfig
    from megatron_sip.evaluate.run import evaluate

    cfg = config_from_args(args)
    # The YAML `eval` section once Config has one; the flags given override it.
    section = getattr(cfg, "eval", None) or EvalConfig()
    flags = {"checkpoint": args.checkpoint, "baseline": args.baseline, "output_dir": args.output_dir,
             "num_prefixes": args.num_prefixes, "seeds": args.seeds, "judge_temperature": args.judge_temperature,
             "temperature": args.temperature, "pairs": args.pairs, "batch_size": args.batch_size}
    eval_cfg = dataclasses.replace(section, **{k: v for k, v in flags.items() if v is not None})
    bar = functools.partial(tqdm, file=sys.stderr, disable=args.no_progress, dynamic_ncols=True, unit=" prefixes")
    outcome = evaluate(cfg, eval_cfg, progress=bar)
    report = outcome.report
    win = report["win_rate"]
    if win is not None and win["value"] is not None:
        print(f"win rate {win['value']:.3f} [{win['ci_low']:.3f}, {win['ci_high']:.3f}] over {win['n']} prefixes")
    for name in ("safety", "factuality", "nll"):
        print(f"{name}: " + ", ".join(f"{label} {_number(v)}" for label, v in report[name].items()))
    if report["preference"]:
        print("preference: " + ", ".join(f"{label} {_number(e['value'])}" for label, e in report["preference"].items()))
    print(f"report: {outcome.output_dir / 'report.md'}")
    return 0


def _number(value: object) -> str:
    return "n/a" if value is None else f"{value:.3f}"
