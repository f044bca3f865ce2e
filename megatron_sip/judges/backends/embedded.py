"""The `embedded` backend: a local Hugging Face model in this process, no HTTP.

Requests of concurrent groups are coalesced by the same `Batcher` that `megatron-sip serve`
uses. The model is loaded once per process and model spec and shared (judge and rewriter on the
same embedded model load it once): `shared_generator` holds that cache.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

from megatron_sip.judges.generation import Generation, GenerationRequest
from megatron_sip.serve.batcher import Batcher
from megatron_sip.serve.generator import LocalGenerator, LocalRequest

logger = logging.getLogger(__name__)

_CACHE_LOCK = threading.Lock()
_CACHE: Dict[str, LocalGenerator] = {}


def shared_generator(spec: str) -> LocalGenerator:
    """The process's LocalGenerator for `spec`, loaded on first use (blocking, ~15 s on CPU)."""
    with _CACHE_LOCK:
        if spec not in _CACHE:
            _CACHE[spec] = LocalGenerator(spec)
        return _CACHE[spec]


class EmbeddedGenerator:
    """A `TextGenerator` over a local model; `api` chat applies the model's chat template."""

    def __init__(self, generator: LocalGenerator, *, api: str, max_batch_size: int) -> None:
        self._generator = generator
        self._api = api
        self._batcher = Batcher(generator, max_batch_size=max_batch_size)
        self._batcher.start()

    @classmethod
    async def open(cls, spec: str, *, api: str, max_batch_size: int) -> "EmbeddedGenerator":
        generator = await asyncio.to_thread(shared_generator, spec)
        return cls(generator, api=api, max_batch_size=max_batch_size)

    async def generate(self, requests: Sequence[GenerationRequest], *,
                       deadline_s: float) -> List[Optional[Generation]]:
        tasks = [asyncio.ensure_future(self._batcher.submit(self._local(r))) for r in requests]
        if not tasks:
            return []
        _, pending = await asyncio.wait(tasks, timeout=max(deadline_s, 0.0))
        for task in pending:
            task.cancel()
        results: List[Optional[Generation]] = []
        for task in tasks:
            if task.cancelled():
                results.append(None)
            elif task.exception() is not None:
                logger.warning("embedded generation failed: %s", task.exception())
                results.append(None)
            else:
                results.append(task.result().generation)
        return results

    def _local(self, request: GenerationRequest) -> LocalRequest:
        if self._api == "chat":
            prompt = self._generator.chat_prompt([{"role": "user", "content": request.prompt}])
            return LocalRequest(replace(request, prompt=prompt))
        return LocalRequest(request, add_special_tokens=True)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._batcher.stop)
