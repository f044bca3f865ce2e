"""Arguments every config-driven command shares: `--config FILE` and Hydra-grammar overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

from megatron_sip.config import Config, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "examples" / "tiny_cpu.yaml"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="YAML config (default: the embedded CPU config examples/tiny_cpu.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="Hydra-grammar overrides: a.b=1, +a.new=2, ++a.b=1, ~a.b")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
