"""The text-generation layer under the model judges and the rewriter: the wire types (defined in
`megatron_sip/generation.py`, which `megatron-sip serve` shares) and the judges' own error.
Implementations of `TextGenerator`: the HTTP client of OpenAI-compatible servers
(`judges/client.py`) and the in-process local model (`judges/backends/embedded.py`).
"""

from __future__ import annotations

from megatron_sip.errors import UnavailableError
from megatron_sip.generation import Choice, Generation, GenerationRequest, TextGenerator, TokenLogprobs

__all__ = ["Choice", "Generation", "GenerationRequest", "JudgeUnavailableError", "TextGenerator", "TokenLogprobs"]


class JudgeUnavailableError(UnavailableError):
    """No judge or rewriter endpoint can be used (none healthy at start, or a bad setup)."""
