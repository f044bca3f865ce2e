"""CPU shims that let Megatron-Core train and generate over gloo on a machine without CUDA.

Megatron-Core assumes a GPU in a few recurring ways (measured on 0.16.1 and 0.19.x):
- `torch.cuda.current_device()` passed as `device=` (about 200 call sites), literal
  `device="cuda"` / `.cuda()` in schedules, `broadcast_data` and the optimizer;
- the CUDA RNG tracker (`model_parallel_cuda_manual_seed`, `get_cuda_rng_tracker().fork()`);
- `torch.cuda.Event`, `Stream`, `nvtx`, `synchronize` in timers and schedules.

`install()` maps these to the CPU: a TorchFunctionMode rewrites CUDA devices in factory calls and
`.to()`, `torch.cuda` entry points return CPU stand-ins, and the RNG tracker forks the CPU
generator. It is a no-op when CUDA is available, so the same code runs unchanged on GPUs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_installed = False
_lock = threading.Lock()
_CPU = torch.device("cpu")


def needed() -> bool:
    """True when there is no usable CUDA device, so Megatron-Core needs the CPU shims."""
    return not torch.cuda.is_available()


def install() -> bool:
    """Install the CPU shims once per process; returns whether they are active."""
    global _installed
    if not needed():
        return False
    with _lock:
        if not _installed:
            _patch_torch_cuda()
            _patch_tensor_and_module_cuda()
            _CudaToCpuMode().__enter__()  # process-wide: stays active for the life of the process
            _patch_rng_tracker()
            _patch_clip_grads()
            _installed = True
    return True


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int is how Megatron spells torch.cuda.current_device().
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites `device=cuda...` in every torch call, and `tensor.to("cuda")`, to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = {**kwargs, "device": _CPU}
        if func in (torch.Tensor.to, torch.Tensor.cuda) or getattr(func, "__name__", "") == "to":
            args = tuple(_CPU if _is_cuda_device(a) and not isinstance(a, int) else a for a in args)
        return func(*args, **kwargs)


class _CpuEvent:
    """Stand-in for torch.cuda.Event: timing through the host clock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._time = 0.0

    def record(self, stream: Any = None) -> None:
        import time

        self._time = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: "_CpuEvent") -> float:
        return (end._time - self._time) * 1000.0


class _CpuStream:
    """Stand-in for torch.cuda.Stream: CPU work is already ordered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> _CpuEvent:
        return event or _CpuEvent()


class _NoNvtx:
    @staticmethod
    def range_push(*args: Any, **kwargs: Any) -> None:
        pass

    @staticmethod
    def range_pop(*args: Any, **kwargs: Any) -> None:
        pass

    @staticmethod
    def range(*args: Any, **kwargs: Any):
        return contextlib.nullcontext()

    @staticmethod
    def mark(*args: Any, **kwargs: Any) -> None:
        pass


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.set_device = lambda *a, **k: None
    cuda.device_count = lambda: 0
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda: None
    cuda.Event = _CpuEvent
    cuda.Stream = _CpuStream
    cuda.current_stream = lambda *a, **k: _CpuStream()
    cuda.default_stream = lambda *a, **k: _CpuStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.nvtx = _NoNvtx
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_reserved = lambda *a, **k: 0
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the CPU generator directly.
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: None


def _patch_tensor_and_module_cuda() -> None:
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self


def _patch_rng_tracker() -> None:
    """Megatron's tracker keeps named CUDA generator states; here they are CPU generator states."""
    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # The tracker warns when a fork changes the CPU generator; on CPU that generator *is* the
    # forked one, so the warning would fire on every dropout region.
    logging.getLogger(mcore_random.__name__).addFilter(
        lambda record: "CPU RNG state changed" not in record.getMessage())


def _clip_grad_by_total_norm_cpu(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """Megatron's clip_grad_by_total_norm_fp32 without its `torch.cuda.FloatTensor` assertion."""
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff >= 1.0:
        return
    for param in parameters:
        grad = getattr(param, attr, None)
        if grad is not None:
            grad.detach().mul_(clip_coeff)


def _patch_clip_grads() -> None:
    from megatron.core.optimizer import clip_grads, optimizer

    clip_grads.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_cpu
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_cpu
