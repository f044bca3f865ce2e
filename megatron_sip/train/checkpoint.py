"""Checkpoints: policy, optimizer and reference model through Megatron-Core's
`dist_checkpointing` (sharded, reshardable between TP/PP layouts), plus the scheduler and trainer
counters (rank 0) and every rank's own state as plain torch files: its RNG streams and what its
step function holds (e.g. the rollouts SIP already generated for the next step under overlap).
Those files hold only tensors and plain containers and load with `weights_only=True`; every file
a load would unpickle is checked first (`plain_state.py`).

Writes are atomic and durable: a checkpoint is written to `step_XXXXXXXX.partial/`; every rank
reports through an all-reduce whether its files were written (a rank that failed stops every rank
with one line naming it); rank 0 then fsyncs the files, renames the directory and fsyncs its
parent before `latest` moves. A crash mid-write leaves no directory that looks complete.

`saved.json` records the save order: the newest `keep_last` saved checkpoints are kept (never the
one just written). Resuming from an older step moves the newer checkpoints of the abandoned
timeline into `abandoned_after_step_XXXXXXXX[_N]/` beside them; nothing is deleted but pruned
checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_sip.durable import fsync_path, fsync_tree, write_atomically, write_json_atomically, write_text_atomically
from megatron_sip.errors import InputError, TrainingError
from megatron_sip.logging_utils import get_logger
from megatron_sip.parallel import ParallelContext
from megatron_sip.train.plain_state import check_plain, load_plain, verify_checkpoint_files

_log = get_logger(__name__)
_PREFIX, _PARTIAL, _LATEST = "step_", ".partial", "latest"
_TRAINER_FILE = "trainer_state.pt"
_RANK_DIR = "ranks"
_ORDER_FILE = "saved.json"
_ABANDONED = "abandoned_after_"


class CheckpointWriteError(TrainingError):
    """A rank could not write its part of a checkpoint; the message names the rank and the file."""


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def step_dir_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


# -- RNG state as tensors and plain containers ---------------------------------------------------
def rng_state() -> Dict[str, Any]:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    version, internal, gauss_next = random.getstate()
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
             "numpy": {"bit_generator": str(bit_generator), "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
             "torch": torch.get_rng_state(),
             "tracker": dict(get_cuda_rng_tracker().get_states())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    python, numpy_ = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    np.random.set_state((numpy_["bit_generator"], numpy_["keys"].numpy().astype(np.uint32), numpy_["pos"],
                         numpy_["has_gauss"], numpy_["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_plain(path: Path, state: Dict[str, Any]) -> None:
    """torch.save a checked plain state durably (the one write a test may make fail)."""
    write_atomically(path, lambda stream: torch.save(state, stream))


@dataclass(frozen=True)
class _WriteFailure:
    path: Path
    error: str


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

    # -- saving ------------------------------------------------------------------------------------
    def save(self, step: int, *, modules: Dict[str, Any], optimizer: Any, trainer_state: Dict[str, Any],
             rank_state: Optional[Dict[str, Any]] = None) -> Path:
        """Save at `step`. `modules` maps names ("model", "reference") to unwrapped model chunks;
        `trainer_state` is rank 0's, `rank_state` this rank's own. Raises CheckpointWriteError on
        every rank when any rank could not write."""
        from megatron.core import dist_checkpointing

        final = self.root / step_dir_name(step)
        partial = final.with_name(final.name + _PARTIAL)
        if self.ctx.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        _barrier()
        # Megatron's writer reports its own failures on every rank (torch.distributed.checkpoint
        # gathers the write results); the files below are ours to agree on.
        dist_checkpointing.save(self._sharded(modules, optimizer, loading=False), str(partial))
        own_files = self._own_files(partial, self.ctx.rank, trainer_state={**trainer_state, "step": step,
                                                                          "world_size": self.ctx.world_size},
                                    rank_state={"rng": rng_state(), **(rank_state or {})})
        self._agree(step, partial, self._write_own(own_files))
        failure = self._publish(final, partial) if self.ctx.rank == 0 else None
        self._agree(step, partial, failure, publishing=True)
        return final

    def _own_files(self, partial: Path, rank: int, *, trainer_state: Dict[str, Any],
                   rank_state: Dict[str, Any]) -> Dict[Path, Dict[str, Any]]:
        files = {self._rank_file(partial, rank): rank_state}
        if rank == 0:
            files[partial / _TRAINER_FILE] = trainer_state
        for path, state in files.items():
            check_plain(state, path.name)  # a programming error, not a write failure
        return files

    def _write_own(self, files: Dict[Path, Dict[str, Any]]) -> Optional[_WriteFailure]:
        for path, state in files.items():
            try:
                path.parent.mkdir(exist_ok=True)
                write_plain(path, state)
            except OSError as exc:
                return _WriteFailure(path, str(exc))
        return None

    def _agree(self, step: int, partial: Path, failure: Optional[_WriteFailure], *, publishing: bool = False) -> None:
        """Every rank learns whether any rank failed (int32: all-reduce cannot reduce bool)."""
        failed_per_rank = torch.zeros(self.ctx.world_size, dtype=torch.int32, device=self.ctx.device)
        if failure is not None:
            failed_per_rank[self.ctx.rank] = 1
        if dist.is_initialized() and self.ctx.world_size > 1:
            dist.all_reduce(failed_per_rank)
        failed_ranks = failed_per_rank.nonzero().flatten().tolist()
        if not failed_ranks:
            return
        rank = failed_ranks[0]
        if self.ctx.rank == 0 and not publishing:
            shutil.rmtree(partial, ignore_errors=True)  # free the space (disk full) before stopping
        if failure is not None and rank == self.ctx.rank:
            where = f"{failure.path} ({failure.error})"
        elif publishing:
            where = f"{self.root} (publishing the checkpoint)"
        else:
            where = str(self._rank_file(partial, rank)) + (f" or {partial / _TRAINER_FILE}" if rank == 0 else "")
        others = f" (and ranks {failed_ranks[1:]})" if len(failed_ranks) > 1 else ""
        raise CheckpointWriteError(f"checkpoint at step {step} not saved: rank {rank}{others} could not write "
                                   f"{where}; the previous checkpoint is still {self.root / _LATEST}")

    def _publish(self, final: Path, partial: Path) -> Optional[_WriteFailure]:
        """Rank 0: make the written checkpoint durable and current, then prune."""
        try:
            fsync_tree(partial)
            if final.exists():
                self._move_aside([final], label=f"{_ABANDONED}{final.name}_resaved")
            os.replace(partial, final)
            fsync_path(self.root)
            order = [name for name in self._saved_order() if name != final.name] + [final.name]
            kept, dropped = order[-self.keep_last:], order[:-self.keep_last]
            write_text_atomically(self.root / _LATEST, final.name + "\n")
            write_json_atomically(self.root / _ORDER_FILE, {"saved": kept})
        except OSError as exc:
            return _WriteFailure(self.root, str(exc))
        for name in dropped:
            shutil.rmtree(self.root / name, ignore_errors=True)
        _log.info("saved checkpoint %s", final)
        return None

    def _saved_order(self) -> List[str]:
        """Checkpoint names in save order (older runs without the record: by name)."""
        record = self.root / _ORDER_FILE
        if not record.is_file():
            return [path.name for path in self.list()]
        try:
            names = json.loads(record.read_text())["saved"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{record}: corrupt checkpoint order record ({exc})") from exc
        return [name for name in names if (self.root / name).is_dir()]

    # -- finding -----------------------------------------------------------------------------------
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

    def _rank_file(self, checkpoint: Path, rank: int) -> Path:
        return checkpoint / _RANK_DIR / f"rank_{rank:05d}.pt"

    # -- loading -----------------------------------------------------------------------------------
    def load(self, path: Path, *, modules: Dict[str, Any], optimizer: Any) -> Dict[str, Any]:
        """Load into the given modules/optimizer; returns the trainer state saved with it, with
        this rank's own state under "rank_state" ({} when saved with another world size).
        InputError (before anything is unpickled) when a file holds more than plain data."""
        from megatron.core import dist_checkpointing

        path = Path(path)
        if not (path / _TRAINER_FILE).is_file():
            raise FileNotFoundError(f"{path}: not a complete megatron_sip checkpoint (no {_TRAINER_FILE})")
        verify_checkpoint_files(path)
        loaded = dist_checkpointing.load(self._sharded(modules, optimizer, loading=True), str(path))
        for name, module in modules.items():
            module.load_state_dict(_strip(loaded[name], f"{name}."))
        if optimizer is not None:
            optimizer.load_state_dict(loaded["optimizer"])
        trainer_state = load_plain(path / _TRAINER_FILE)
        rank_file = self._rank_file(path, self.ctx.rank)
        trainer_state["rank_state"] = {}
        if trainer_state.get("world_size") == self.ctx.world_size and rank_file.is_file():
            rank_state = load_plain(rank_file)
            set_rng_state(rank_state.pop("rng"))
            trainer_state["rank_state"] = rank_state
        else:
            _log.warning("%s: saved with another world size; RNG streams restart from the seed and per-rank "
                         "state (pending SIP rollouts) is recomputed", path)
        _log.info("resumed from %s (step %d)", path, trainer_state["step"])
        return trainer_state

    def abandon_newer_than(self, resumed: Path) -> None:
        """After resuming from `resumed`: move the checkpoints of this root saved at later steps
        (an abandoned timeline) aside, so that pruning and `latest` see only this one. Rank 0 moves;
        every rank waits for it."""
        resumed = Path(resumed)
        if self.ctx.rank == 0 and resumed.parent.resolve() == self.root.resolve():
            newer = [path for path in self.list() if path.name > resumed.name]
            if newer:
                target = self._move_aside(newer, label=f"{_ABANDONED}{resumed.name}")
                _log.warning("resumed from %s: moved the %d newer checkpoints of the abandoned run to %s",
                             resumed.name, len(newer), target)
            order = [name for name in self._saved_order() if name <= resumed.name]
            write_json_atomically(self.root / _ORDER_FILE, {"saved": order or [resumed.name]})
            write_text_atomically(self.root / _LATEST, resumed.name + "\n")
        _barrier()

    def _move_aside(self, paths: List[Path], *, label: str) -> Path:
        target = _unused_name(self.root / label)
        target.mkdir()
        for path in paths:
            os.replace(path, target / path.name)
        fsync_path(target)
        fsync_path(self.root)
        return target


def _unused_name(path: Path) -> Path:
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}_{number}")
    return candidate


def _strip(state: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in state.items()}

