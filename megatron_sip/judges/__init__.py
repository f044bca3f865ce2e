"""Judges and rewriter: prompts, verdict parsing, comparison schedules, rewards, backends.

Public API (imported lazily, so that loading the config schema does not pull in aiohttp/torch):
    JudgeService, AsyncJudge          judge batches of groups (sync / async)
    JudgeGroup, Candidate, GroupResult
    Rewriter, AsyncRewriter, RewriteRequest, cut_to_tokens, cut_to_token_ids
    JudgeUnavailableError
See docs/judges.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "JudgeService": "megatron_sip.judges.service",
    "AsyncJudge": "megatron_sip.judges.judge",
    "JudgeGroup": "megatron_sip.judges.types",
    "Candidate": "megatron_sip.judges.types",
    "GroupResult": "megatron_sip.judges.types",
    "RewriteRequest": "megatron_sip.judges.types",
    "Rewriter": "megatron_sip.judges.rewriter",
    "AsyncRewriter": "megatron_sip.judges.rewriter",
    "cut_to_tokens": "megatron_sip.judges.rewriter",
    "cut_to_token_ids": "megatron_sip.judges.rewriter",
    "JudgeUnavailableError": "megatron_sip.judges.generation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'megatron_sip.judges' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
