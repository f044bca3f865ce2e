"""`megatron-sip demo` (= `make demo`): corpus, judge server, SIP and baseline training, evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Run the whole system on the embedded default (CPU, tiny model, demo corpus, SmolLM2 judge)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="runs/demo", help="where everything goes (default runs/demo)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (default 4)")
    parser.add_argument("--eval-prefixes", type=int, default=4, help="held-out prefixes judged (default 4)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="extra overrides for every run")


def run(args: argparse.Namespace) -> int:
    from megatron_sip.demo import DemoSettings, run_demo
    from megatron_sip.logging_utils import setup_logging

    setup_logging("INFO")
    report = run_demo(DemoSettings(output_dir=Path(args.output_dir), steps=args.steps,
                                   num_eval_prefixes=args.eval_prefixes), args.overrides)
    print(f"demo finished: report at {report} (and {report.with_suffix('.json')})")
    return 0
