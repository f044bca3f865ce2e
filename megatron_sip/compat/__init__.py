"""Everything that lets Megatron-Core run here (CPU, gloo) and across its versions.

- `cpu`: runtime shims for CUDA-only call sites; no-ops when CUDA is present.
- `versions`: the installed Megatron-Core version and adapters for API differences between
  0.16.x (newest on Python 3.11) and 0.19.x (NGC containers, Python 3.12).
"""

from megatron_sip.compat.cpu import install as install_cpu_shims
from megatron_sip.compat.versions import MCORE_VERSION, mcore_at_least

__all__ = ["install_cpu_shims", "MCORE_VERSION", "mcore_at_least"]
