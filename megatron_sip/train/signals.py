"""Pre-emption: SIGTERM and SIGUSR1 (SLURM's `--signal=USR1@...` warning) ask the loop to save a
checkpoint and exit cleanly after the current step. Ranks agree through an all-reduce, so every
rank stops at the same step even if only some received the signal."""

from __future__ import annotations

import signal
from typing import Any

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self) -> None:
        self.signal_name = ""
        self._previous: dict = {}

    def install(self) -> "StopRequest":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, device: torch.device) -> bool:
        """True on every rank when any rank was signalled."""
        flag = torch.tensor([1 if self.signal_name else 0], dtype=torch.int32, device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
