"""Async client of OpenAI-compatible servers (`trtllm-serve`, `vllm serve`, `megatron-sip serve`).

`generate(requests, deadline_s=...)` answers every request or marks it failed (None) within the
deadline: each request is sent to the least-loaded endpoint whose breaker lets it through, with at
most `max_concurrency_per_endpoint` in flight per endpoint, a per-attempt timeout, and up to
`max_retries` retries (exponential backoff with full jitter, possibly on another endpoint).
HTTP 5xx, 408, 429, timeouts, broken connections, malformed JSON and wrong schemas are retried;
other 4xx are the request's own fault and are not. The API key is sent as a bearer token and never
logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import ssl
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import aiohttp

from megatron_sip.errors import ConfigError
from megatron_sip.judges.config import EndpointConfig
from megatron_sip.judges.endpoints import Endpoint, EndpointPool
from megatron_sip.judges.generation import Generation, GenerationRequest, JudgeUnavailableError
from megatron_sip.judges import wire

logger = logging.getLogger(__name__)

_HEALTH_POLL_S = 0.5
_PROBE_TIMEOUT_S = 5.0  # one /health probe; a busy server may be slow to answer it
_BACKOFF_CAP_FACTOR = 16.0
_ERROR_BODY_CHARS = 200


class _AttemptFailed(Exception):
    def __init__(self, reason: str, *, retryable: bool = True, endpoint_fault: bool = True) -> None:
        super().__init__(reason)
        self.retryable = retryable
        self.endpoint_fault = endpoint_fault


class _LogprobsRejected(Exception):
    """The server refused the logprobs fields: resend without them."""


def read_api_key(cfg: EndpointConfig, section: str) -> Optional[str]:
    """The API key from `api_key_env` or `api_key_file`; None when neither is set."""
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env, "").strip()
        if not key:
            raise ConfigError(f"{section}.api_key_env", f"environment variable {cfg.api_key_env} is not set")
        return key
    if cfg.api_key_file:
        path = Path(cfg.api_key_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"{section}.api_key_file", f"{path} not found")
        key = path.read_text().strip()
        if not key:
            raise ConfigError(f"{section}.api_key_file", f"{path} is empty")
        return key
    return None


class OpenAIClient:
    """A `TextGenerator` over HTTP. Call `await start()` (health gating) before `generate`."""

    def __init__(self, cfg: EndpointConfig, *, section: str = "judge") -> None:
        if not cfg.endpoints:
            raise ConfigError(f"{section}.endpoints", "no endpoint: start `megatron-sip serve --model "
                              f"embedded --port 8000` and set {section}.endpoints=[http://127.0.0.1:8000]")
        if cfg.api == "chat" and cfg.max_prompts_per_request > 1:
            logger.warning("%s.max_prompts_per_request=%d is ignored with %s.api=chat (one conversation "
                           "per request)", section, cfg.max_prompts_per_request, section)
        self._cfg = cfg
        self._section = section
        self._urls = [wire.normalize_base_url(u) for u in cfg.endpoints]
        self._headers = {"Content-Type": "application/json"}
        api_key = read_api_key(cfg, section)
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._pool: Optional[EndpointPool] = None
        self._session: Optional[aiohttp.ClientSession] = None
        self.model: Optional[str] = cfg.model
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"OpenAIClient(endpoints={self._urls}, model={self.model!r})"

    @property
    def endpoints(self) -> List[Endpoint]:
        return list(self._pool.endpoints) if self._pool else []

    async def start(self) -> None:
        """Open the session and wait up to `health_timeout_s` for at least one healthy endpoint."""
        cfg = self._cfg
        self._pool = EndpointPool(self._urls, capacity=cfg.max_concurrency_per_endpoint,
                                  failure_threshold=cfg.circuit_failures, cooldown_s=cfg.circuit_cooldown_s)
        connector = aiohttp.TCPConnector(limit=0, ssl=self._ssl_setting())
        self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
        healthy = await self._wait_healthy()
        for endpoint in self._pool.endpoints:
            if endpoint.url not in healthy:
                logger.warning("endpoint %s is not healthy at start; it will be retried after %.1fs",
                               endpoint.url, cfg.circuit_cooldown_s)
                self._pool.mark_down(endpoint)
        if self.model is None:
            self.model = await self._discover_model(healthy[0])
        logger.info("%s: %d/%d endpoints healthy, model %s", self._section, len(healthy),
                    len(self._urls), self.model)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def generate(self, requests: Sequence[GenerationRequest], *,
                       deadline_s: float) -> List[Optional[Generation]]:
        if self._session is None or self._pool is None:
            raise RuntimeError("OpenAIClient.start() was not awaited")
        deadline = time.monotonic() + deadline_s
        results: List[Optional[Generation]] = [None] * len(requests)
        tasks = [asyncio.create_task(self._run_chunk([requests[i] for i in idx], deadline, idx, results))
                 for idx in self._chunks(requests)]
        if not tasks:
            return results
        _, pending = await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0.0))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            logger.warning("%s: %d request(s) unanswered at the %.1fs deadline", self._section,
                           len(pending), deadline_s)
        return results

    def _chunks(self, requests: Sequence[GenerationRequest]) -> List[List[int]]:
        """Indices grouped into requests: several prompts per request only on the completions api."""
        size = self._cfg.max_prompts_per_request if self._cfg.api == "completions" else 1
        by_key: Dict[Any, List[int]] = {}
        for i, request in enumerate(requests):
            by_key.setdefault(wire.batch_key(request), []).append(i)
        return [idx[k:k + size] for idx in by_key.values() for k in range(0, len(idx), size)]

    async def _run_chunk(self, chunk: List[GenerationRequest], deadline: float, indices: List[int],
                         results: List[Optional[Generation]]) -> None:
        attempt = 0
        while attempt <= self._cfg.max_retries:
            endpoint = await self._pool.acquire(deadline)
            if endpoint is None:
                return
            ok, endpoint_fault, retryable = False, True, True
            try:
                timeout = min(self._cfg.request_timeout_s, deadline - time.monotonic())
                if timeout <= 0:
                    endpoint_fault = False
                    return
                generations = await asyncio.wait_for(self._post(endpoint, chunk), timeout=timeout)
                for index, generation in zip(indices, generations):
                    results[index] = generation
                ok = True
                return
            except _LogprobsRejected:
                logger.warning("endpoint %s rejects logprobs; asking it without them", endpoint.url)
                endpoint.logprobs_supported = False
                endpoint_fault = False
                continue
            except asyncio.TimeoutError:
                reason = f"no complete answer within {timeout:.2f}s"
            except _AttemptFailed as exc:
                reason, retryable, endpoint_fault = str(exc), exc.retryable, exc.endpoint_fault
            finally:
                self._pool.release(endpoint, ok=ok, counts_as_failure=endpoint_fault)
            logger.debug("%s: attempt %d on %s failed: %s", self._section, attempt, endpoint.url, reason)
            if not retryable:
                logger.warning("%s: request refused by %s: %s", self._section, endpoint.url, reason)
                return
            attempt += 1
            if attempt <= self._cfg.max_retries:
                await self._backoff(attempt, deadline)

    async def _backoff(self, attempt: int, deadline: float) -> None:
        cap = self._cfg.retry_backoff_s * min(2.0 ** (attempt - 1), _BACKOFF_CAP_FACTOR)
        delay = self._rng.uniform(0.0, cap)  # full jitter: retries of a burst do not align
        await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))

    async def _post(self, endpoint: Endpoint, chunk: List[GenerationRequest]) -> List[Generation]:
        api = self._cfg.api
        path = wire.CHAT_PATH if api == "chat" else wire.COMPLETIONS_PATH
        asks_logprobs = endpoint.logprobs_supported and chunk[0].top_logprobs > 0
        body = wire.request_body(api, self.model, self._seeded(chunk), with_logprobs=asks_logprobs)
        try:
            async with self._session.post(endpoint.url + path, json=body) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise _AttemptFailed(f"{type(exc).__name__}: {exc}") from exc
        if status != 200:
            self._raise_for_status(status, raw, asks_logprobs)
        try:
            payload = json.loads(raw)
            return wire.parse_response(api, payload, num_prompts=len(chunk), n=chunk[0].n)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _AttemptFailed(f"malformed JSON: {exc}") from exc
        except wire.SchemaError as exc:
            raise _AttemptFailed(f"wrong schema: {exc}") from exc

    @staticmethod
    def _raise_for_status(status: int, raw: bytes, asked_logprobs: bool) -> None:
        text = raw[:_ERROR_BODY_CHARS].decode("utf-8", errors="replace")
        if status in (400, 422) and asked_logprobs and "logprob" in text.lower():
            raise _LogprobsRejected()
        if status == 429:
            raise _AttemptFailed(f"HTTP 429 (overloaded): {text}", endpoint_fault=False)
        if status >= 500 or status == 408:
            raise _AttemptFailed(f"HTTP {status}: {text}")
        raise _AttemptFailed(f"HTTP {status}: {text}", retryable=False, endpoint_fault=False)

    def _seeded(self, chunk: List[GenerationRequest]) -> List[GenerationRequest]:
        """With `request_seed`, each prompt gets a seed of its own derived from its text."""
        if self._cfg.request_seed is None or chunk[0].seed is not None:
            return chunk
        digest = hashlib.sha256(f"{self._cfg.request_seed}:{chunk[0].prompt}".encode()).digest()
        seed = int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
        return [replace(r, seed=seed) for r in chunk]

    async def _wait_healthy(self) -> List[str]:
        deadline = time.monotonic() + self._cfg.health_timeout_s
        while True:
            probe_s = min(_PROBE_TIMEOUT_S, max(deadline - time.monotonic(), _HEALTH_POLL_S))
            checks = await asyncio.gather(*(self._probe(u, probe_s) for u in self._urls))
            healthy = [u for u, problem in zip(self._urls, checks) if problem is None]
            if healthy:
                return healthy
            if time.monotonic() + _HEALTH_POLL_S > deadline:
                problems = "; ".join(f"{u} ({p})" for u, p in zip(self._urls, checks))
                raise JudgeUnavailableError(
                    f"{self._section}.endpoints: none answered {wire.HEALTH_PATH} within "
                    f"{self._cfg.health_timeout_s:.0f}s: {problems}. Start the servers or fix the URLs")
            await asyncio.sleep(_HEALTH_POLL_S)

    async def _probe(self, url: str, timeout_s: float) -> Optional[str]:
        """None when healthy, else what went wrong."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._session.get(url + wire.HEALTH_PATH, timeout=timeout) as response:
                await response.read()
                return None if response.status == 200 else f"HTTP {response.status}"
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as exc:
            return type(exc).__name__

    async def _discover_model(self, url: str) -> str:
        timeout = aiohttp.ClientTimeout(total=self._cfg.request_timeout_s)
        try:
            async with self._session.get(url + wire.MODELS_PATH, timeout=timeout) as response:
                payload = json.loads(await response.read())
            ids = wire.parse_model_ids(payload)
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError, json.JSONDecodeError,
                wire.SchemaError) as exc:
            raise JudgeUnavailableError(f"{url}{wire.MODELS_PATH}: cannot list models ({exc}); "
                                        f"set {self._section}.model") from exc
        if not ids:
            raise JudgeUnavailableError(f"{url}{wire.MODELS_PATH} lists no model; set {self._section}.model")
        return ids[0]

    def _ssl_setting(self):
        if not self._cfg.verify_tls:
            return False
        if self._cfg.ca_file:
            path = Path(self._cfg.ca_file).expanduser()
            if not path.is_file():
                raise ConfigError(f"{self._section}.ca_file", f"{path} not found")
            return ssl.create_default_context(cafile=str(path))
        return True
