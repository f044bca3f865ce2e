"""Launcher environments, CPU shims that step aside under CUDA, and layout-invariant init."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from megatron_sip.model.init import _shard
from megatron_sip.parallel import launch_env
from tests.launch import REPO_ROOT, cli_env


def test_launch_env_prefers_torchrun_then_slurm() -> None:
    torchrun = launch_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.master_addr, torchrun.master_port) == (3, 4, 1, "n1", 1234)
    slurm = launch_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "n2", "MASTER_PORT": "99"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank) == (5, 8, 1)
    both = launch_env({"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "7", "SLURM_NTASKS": "16"})
    assert (both.rank, both.world_size) == (0, 2)
    alone = launch_env({})
    assert (alone.rank, alone.world_size) == (0, 1) and alone.master_port > 0


def test_cpu_shims_are_noops_when_cuda_is_available() -> None:
    code = (
        "import torch\n"
        "torch.cuda.is_available = lambda: True\n"
        "before = (torch.cuda.current_device, torch.Tensor.cuda, torch.cuda.Event)\n"
        "from megatron_sip.compat import install_cpu_shims\n"
        "assert install_cpu_shims() is False\n"
        "assert (torch.cuda.current_device, torch.Tensor.cuda, torch.cuda.Event) == before\n"
        "assert not torch.overrides._get_current_function_mode_stack()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_cpu_shims_map_cuda_devices_to_cpu() -> None:
    code = (
        "import torch\n"
        "from megatron_sip.compat import install_cpu_shims\n"
        "assert install_cpu_shims() is True\n"
        "x = torch.zeros(3, device=torch.cuda.current_device())\n"
        "y = torch.ones(2, device='cuda').cuda().to('cuda')\n"
        "assert x.device.type == 'cpu' and y.device.type == 'cpu'\n"
        "e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)\n"
        "e0.record(); e1.record(); assert e0.elapsed_time(e1) >= 0\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dim", [0, 1])
def test_shard_cuts_like_megatron(stride: int, dim: int) -> None:
    """Megatron's CPU init splits the master weight into stride x TP pieces and deals them out."""
    full = torch.randn(12, 8) if dim == 0 else torch.randn(8, 12)
    tp = 2
    shard_shape = list(full.shape)
    shard_shape[dim] //= tp
    param = torch.nn.Parameter(torch.empty(shard_shape))
    param.tensor_model_parallel, param.partition_dim, param.partition_stride = True, dim, stride
    pieces = torch.split(full, full.shape[dim] // (stride * tp), dim=dim)
    for rank in range(tp):
        expected = torch.cat(pieces[rank::tp], dim=dim)
        assert torch.equal(_shard(full, param, rank, tp), expected)
    # For a gated MLP (stride 2) rank 0 holds [gate_0; up_0], not the first half of [gate; up].
    if stride == 2 and dim == 0:
        gate, up = full.chunk(2, dim=0)
        assert torch.equal(_shard(full, param, 0, tp), torch.cat([gate[:3], up[:3]]))


def test_tensorboard_events_hold_every_numeric_metric(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from megatron_sip.train.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path, enabled=True, log_every=1, total_steps=3, tensorboard=True)
    for step in (1, 2, 3):
        writer.write({"step": step, "loss": 1.0 / step, "rollout_chosen_rate": 0.25 * step, "note": "text"})
    writer.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "rollout_chosen_rate"}
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("loss")] == [(1, 1.0), (2, 0.5), (3, 0.333333)]


def test_tensorboard_without_its_package_names_the_key(tmp_path, monkeypatch) -> None:
    import sys

    from megatron_sip.errors import ConfigError
    from megatron_sip.train.metrics import MetricsWriter

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were missing
    with pytest.raises(ConfigError, match="run.tensorboard"):
        MetricsWriter(tmp_path, enabled=True, log_every=1, total_steps=1, tensorboard=True)
