"""Checkpoints: policy, optimizer and reference model through Megatron-Core's
`dist_checkpointing` (sharded, reshardable between TP/PP layouts), plus the scheduler and trainer
counters (rank 0) and every rank's own state as plain torch files: its RNG streams and what its
step function holds (e.g. the rollouts SIP already generated for the next step under overlap).

Writes are atomic: a checkpoint is written to `step_XXXXXXXX.partial/` and renamed when every
rank has finished, then `latest` is replaced; a crash mid-write leaves no directory that looks
complete. Only the newest `keep_last` checkpoints are kept.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_sip.logging_utils import get_logger
from megatron_sip.parallel import ParallelContext

_log = get_logger(__name__)
_PREFIX, _PARTIAL, _LATEST = "step_", ".partial", "latest"
_TRAINER_FILE = "trainer_state.pt"
_RANK_DIR = "ranks"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> Dict[str, Any]:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointManager:
    def __init__(self, root: Path, ctx: ParallelContext, *, keep_last: int) -> None:
        self.root = Path(root)
        self.ctx = ctx
        self.keep_last = max(1, keep_last)

    def _sharded(self, modules: Dict[str, Any], optimizer: Any, *, loading: bool) -> Dict[str, Any]:
        sharded = {name: module.sharded_state_dict(prefix=f"{name}.") for name, module in modules.items()}
        if optimizer is not None:
            sharded["optimizer"] = optimizer.sharded_state_dict(sharded["model"], is_loading=loading)
        return sharded

    def save(self, step: int, *, modules: Dict[str, Any], optimizer: Any, trainer_state: Dict[str, Any],
             rank_state: Optional[Dict[str, Any]] = None) -> Path:
        """Save at `step`. `modules` maps names ("model", "reference") to unwrapped model chunks;
        `trainer_state` is rank 0's, `rank_state` this rank's own."""
        from megatron.core import dist_checkpointing

        final = self.root / f"{_PREFIX}{step:08d}"
        partial = final.with_name(final.name + _PARTIAL)
        if self.ctx.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        _barrier()
        dist_checkpointing.save(self._sharded(modules, optimizer, loading=False), str(partial))
        (partial / _RANK_DIR).mkdir(exist_ok=True)
        torch.save({"rng": rng_state(), **(rank_state or {})}, self._rank_file(partial))
        if self.ctx.rank == 0:
            torch.save({**trainer_state, "step": step, "world_size": self.ctx.world_size}, partial / _TRAINER_FILE)
        _barrier()
        if self.ctx.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            latest_tmp = self.root / (_LATEST + ".tmp")
            latest_tmp.write_text(final.name + "\n")
            os.replace(latest_tmp, self.root / _LATEST)
            self._prune()
            _log.info("saved checkpoint %s", final)
        _barrier()
        return final

    def _prune(self) -> None:
        for old in self.list()[:-self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def list(self) -> List[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)
                      and not p.name.endswith(_PARTIAL))

    def latest(self) -> Optional[Path]:
        pointer = self.root / _LATEST
        if pointer.is_file():
            candidate = self.root / pointer.read_text().strip()
            if candidate.is_dir():
                return candidate
        found = self.list()
        return found[-1] if found else None

    def _rank_file(self, checkpoint: Path) -> Path:
        return checkpoint / _RANK_DIR / f"rank_{self.ctx.rank:05d}.pt"

    def load(self, path: Path, *, modules: Dict[str, Any], optimizer: Any) -> Dict[str, Any]:
        """Load into the given modules/optimizer; returns the trainer state saved with it, with
        this rank's own state under "rank_state" ({} when saved with another world size)."""
        from megatron.core import dist_checkpointing

        path = Path(path)
        if not (path / _TRAINER_FILE).is_file():
            raise FileNotFoundError(f"{path}: not a complete megatron_sip checkpoint (no {_TRAINER_FILE})")
        loaded = dist_checkpointing.load(self._sharded(modules, optimizer, loading=True), str(path))
        for name, module in modules.items():
            module.load_state_dict(_strip(loaded[name], f"{name}."))
        if optimizer is not None:
            optimizer.load_state_dict(loaded["optimizer"])
        trainer_state = torch.load(path / _TRAINER_FILE, weights_only=False)
        rank_file = self._rank_file(path)
        trainer_state["rank_state"] = {}
        if trainer_state.get("world_size") == self.ctx.world_size and rank_file.is_file():
            rank_state = torch.load(rank_file, weights_only=False)
            set_rng_state(rank_state.pop("rng"))
            trainer_state["rank_state"] = rank_state
        else:
            _log.warning("%s: saved with another world size; RNG streams restart from the seed and per-rank "
                         "state (pending SIP rollouts) is recomputed", path)
        _log.info("resumed from %s (step %d)", path, trainer_state["step"])
        return trainer_state


def _strip(state: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in state.items()}
