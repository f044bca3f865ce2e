"""Error types users see: each carries the config key, file or endpoint that caused it."""

from __future__ import annotations

EXIT_PARTIAL = 3
"""Exit status of a command that ran but left part of its work undone (e.g. `megatron-sip rewrite`
when some rewrites failed: a rerun retries them); 2 is bad input, 1 a crash."""


class ConfigError(ValueError):
    """An invalid configuration value; the message starts with the dotted key to change."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"{key}: {problem}")


def check_positive(section: str, cfg: object, *names: str) -> None:
    """Raise ConfigError naming `section.name` for the first field that is not > 0."""
    for name in names:
        value = getattr(cfg, name)
        if value is None or value <= 0:
            raise ConfigError(f"{section}.{name}", f"must be positive, got {value}")


def check_choice(section: str, cfg: object, name: str, choices: tuple) -> None:
    """Raise ConfigError naming `section.name` when its value is not one of `choices`."""
    value = getattr(cfg, name)
    if value not in choices:
        raise ConfigError(f"{section}.{name}", f"'{value}' is not one of {', '.join(map(str, choices))}")


class InputError(ValueError):
    """Bad user input (a file, a record, an endpoint): the message names it and says what is wrong."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses); the message says what to change."""


class UnavailableError(RuntimeError):
    """A service the command needs (judge or rewriter endpoints) cannot be used; the message names
    the endpoints and how to fix it."""
