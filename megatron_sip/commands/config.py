"""`megatron-sip config`: print the resolved configuration."""

from __future__ import annotations

import argparse

from megatron_sip.commands.common import add_config_arguments, config_from_args
from megatron_sip.config import to_yaml

HELP = "Print the resolved config (schema defaults <- YAML files <- overrides)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    print(to_yaml(config_from_args(args)), end="")
    return 0
