"""Process-group setup: torch.distributed from torchrun or SLURM, then Megatron-Core's groups.

The result is a frozen `ParallelContext` that the rest of the code receives explicitly, so
algorithm code never reaches into `parallel_state` globals.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist

from megatron_sip.compat import install_cpu_shims
from megatron_sip.model.config import ModelConfig
from megatron_sip.net import free_port


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job, read from the launcher's environment."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


@dataclass(frozen=True)
class ParallelContext:
    """This rank's coordinates in the TP x PP x DP grid and the groups that connect them."""

    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    device: torch.device
    tp_group: Any
    pp_group: Any
    dp_group: Any
    mp_group: Any
    """Model-parallel group (TP x PP): the ranks that hold one replica of the model."""
    mp_rank: int
    mp_src: int
    """Global rank of model-parallel rank 0 (it judges and broadcasts to its replica)."""

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def launch_env(environ: Optional[Dict[str, str]] = None) -> LaunchEnv:
    """torchrun's variables first (RANK/WORLD_SIZE/LOCAL_RANK), then SLURM's (one task per
    process under srun), else a single process on this host."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    else:
        rank, world, local = 0, 1, 0
    addr = env.get("MASTER_ADDR", "127.0.0.1")
    port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else (free_port() if world == 1 else 29500)
    return LaunchEnv(rank, world, local, addr, port)


def init_parallel(model_cfg: ModelConfig, *, seed: int, timeout_minutes: int = 10) -> ParallelContext:
    """Initialise torch.distributed (nccl on GPU, gloo on CPU), Megatron's model-parallel
    groups from the config, and the per-rank RNG streams."""
    install_cpu_shims()
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    env = launch_env()
    tp, pp = model_cfg.tensor_model_parallel_size, model_cfg.pipeline_model_parallel_size
    if env.world_size % (tp * pp):
        raise ValueError(f"world size {env.world_size} is not divisible by model.tensor_model_parallel_size "
                         f"x model.pipeline_model_parallel_size = {tp * pp}")
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        # An explicit init_method rather than MASTER_* in os.environ, which processes this one
        # starts later would inherit.
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        distributed_timeout_minutes=timeout_minutes,
    )
    model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)
    mp_group = parallel_state.get_model_parallel_group()
    return ParallelContext(
        rank=env.rank,
        world_size=env.world_size,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=tp,
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        pp_size=pp,
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        device=torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu"),
        tp_group=parallel_state.get_tensor_model_parallel_group(),
        pp_group=parallel_state.get_pipeline_model_parallel_group(),
        dp_group=parallel_state.get_data_parallel_group(),
        mp_group=mp_group,
        mp_rank=dist.get_rank(group=mp_group),
        mp_src=dist.get_global_rank(mp_group, 0),
    )


def destroy_parallel() -> None:
    """Tear down Megatron's groups and the default process group (tests run several in a row)."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
