"""Everything that lets Megatron-Core run here (CPU, gloo) and across its versions.

- `cpu`: runtime shims for CUDA-only call sites; no-ops when CUDA is present.
- `device`: the TransformerConfig switches (initialisation, kernel fusions) the device allows.
- `inference`: which rollout engine runs on this device and model.
- `versions`: the installed Megatron-Core version and adapters for API differences between
  0.16.x (newest on Python 3.11) and 0.19.x (NGC containers, Python 3.12).
"""

import warnings

from megatron_sip.compat.cpu import install as install_cpu_shims
from megatron_sip.compat.versions import MCORE_VERSION, mcore_at_least

__all__ = ["install_cpu_shims", "quiet_optional_dependency_warnings", "MCORE_VERSION", "mcore_at_least"]


def quiet_optional_dependency_warnings() -> None:
    """Megatron-Core warns at import time, once per module, that Transformer Engine and Apex are
    missing and that it falls back to torch. That is the expected state on CPU; the warnings
    would bury a command's one-line error, so the CLI silences them (the fallback is logged once
    by the model builder)."""
    for pattern in (r".*Transformer Engine and Apex are not installed.*", r".*Apex is not installed.*",
                    r".*MimoModelConfig is experimental.*", r".*full scope is deprecated.*"):
        warnings.filterwarnings("ignore", message=pattern)
