"""Rank-aware logging: rank 0 logs at the configured level, other ranks only warnings and errors."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname).1s [%(name)s] %(message)s"


def global_rank() -> int:
    """This process's rank from torch.distributed, else the launcher's environment, else 0."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def setup_logging(level: str = "INFO") -> None:
    """Configure the root `megatron_sip` logger once per process."""
    logger = logging.getLogger("megatron_sip")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper() if global_rank() == 0 else "WARNING")


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("megatron_sip") else f"megatron_sip.{name}")
