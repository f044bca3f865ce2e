"""`megatron-sip`: a thin entry point. Each subcommand lives in `megatron_sip/commands/<name>.py`
with `HELP`, `add_arguments(parser)` and `run(args) -> int`; modules load only when used, so
`megatron-sip config` does not import torch."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Dict, Optional, Sequence

import megatron_sip.commands
from megatron_sip.errors import ConfigError, InputError, TrainingError, UnavailableError

_NOT_COMMANDS = {"common"}


def _command_modules() -> Dict[str, str]:
    """Subcommand name -> module, one module per file in megatron_sip/commands/."""
    names = sorted(info.name for info in pkgutil.iter_modules(megatron_sip.commands.__path__)
                   if not info.name.startswith("_") and info.name not in _NOT_COMMANDS)
    return {name: f"megatron_sip.commands.{name}" for name in names}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-sip", description="Self-Improving Pretraining on Megatron-Core.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in _command_modules().items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from megatron_sip.compat import quiet_optional_dependency_warnings

    quiet_optional_dependency_warnings()
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except (ConfigError, InputError, TrainingError, UnavailableError, FileNotFoundError) as exc:
        print(f"megatron-sip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"megatron-sip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
