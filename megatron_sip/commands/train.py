"""`megatron-sip train`: train the policy (SIP objectives or the nll baseline)."""

from __future__ import annotations

import argparse

from megatron_sip.commands.common import add_config_arguments, config_from_args

HELP = "Train on Megatron-Core (works under torchrun and srun)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from megatron_sip.train.loop import train

    train(config_from_args(args))
    return 0
