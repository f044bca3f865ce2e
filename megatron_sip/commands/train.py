"""`megatron-sip train`: train the policy (SIP objectives or the nll baseline)."""

from __future__ import annotations

import argparse

from megatron_sip.commands.common import add_config_arguments, config_from_args

HELP = "Train on Megatron-Core (works under torchrun and srun)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                        help="continue from a checkpoint directory, or (no value) from the latest "
                             "under <run.output_dir>/checkpoints; starts fresh when there is none")


def run(args: argparse.Namespace) -> int:
    from megatron_sip.train.loop import train

    train(config_from_args(args), resume=args.resume)
    return 0
