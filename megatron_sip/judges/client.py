"""Async client of OpenAI-compatible servers (`trtllm-serve`, `vllm serve`, `megatron-sip serve`).

`generate(requests, deadline_s=...)` answers every request or marks it failed (None) within the
deadline: each request is sent to the least-loaded endpoint whose breaker lets it through, with at
most `max_concurrency_per_endpoint` in flight per endpoint, a per-attempt timeout, and up to
`max_retries` retries (exponential backoff with full jitter, possibly on another endpoint).
HTTP 5xx, 408, 429, timeouts, broken connections, malformed JSON, wrong schemas and bodies over
`max_response_bytes` are retried; other 4xx are the request's own fault and are not. The API key is
sent as a bearer token and never logged.

Servers differ in what they honour (docs/judges.md, "Which judge server"): one that answers fewer
choices than `n` asked is asked again for the missing ones (and from then on for at most as many
per request as it gave); one that refuses log-probs with a 400 is asked without them. Both are
logged once per endpoint and counted in `counters`, never treated as endpoint faults. Readiness is
`GET /health`, or `GET /v1/models` where a server has no /health route.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import os
import random
import ssl
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import aiohttp

from megatron_sip.errors import ConfigError
from megatron_sip.judges.config import EndpointConfig
from megatron_sip.judges.endpoints import Endpoint, EndpointPool
from megatron_sip.judges.generation import Choice, Generation, GenerationRequest, JudgeUnavailableError
from megatron_sip.judges import wire

logger = logging.getLogger(__name__)

_HEALTH_POLL_S = 0.5
_PROBE_TIMEOUT_S = 5.0  # one /health probe; a busy server may be slow to answer it
_BACKOFF_CAP_FACTOR = 16.0
_ERROR_BODY_CHARS = 200
_READ_CHUNK_BYTES = 64 * 1024


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
        self.counters: "collections.Counter[str]" = collections.Counter()
        """Events worth a metric: short_choice_lists, follow_up_requests, logprobs_rejected,
        oversized_responses."""

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
        choices: List[List[Choice]] = [[] for _ in requests]
        task = asyncio.create_task(self._collect(list(requests), deadline, choices))
        done, _ = await asyncio.wait([task], timeout=max(deadline - time.monotonic(), 0.0))
        if not done:
            task.cancel()
            await asyncio.wait([task])
            logger.warning("%s: %d request(s) unanswered at the %.1fs deadline", self._section,
                           sum(len(c) < r.n for c, r in zip(choices, requests)), deadline_s)
        # A request answered in part (some of its votes came back) keeps what it got.
        return [Generation(choices=tuple(c)) if c else None for c in choices]

    async def _collect(self, requests: List[GenerationRequest], deadline: float,
                       choices: List[List[Choice]]) -> None:
        """Fill `choices[i]` with up to `requests[i].n` choices: one round of requests (split by
        the choices cap), then further rounds for what a server left out, until every request is
        complete or a round brings nothing new."""
        seeded = [self._seeded(r) for r in requests]
        rounds = 0
        while True:
            parts = [(i, part) for i, r in enumerate(seeded) if len(choices[i]) < r.n
                     for part in self._parts(r, r.n - len(choices[i]), rounds)]
            if not parts:
                return
            if rounds > 0:
                self.counters["follow_up_requests"] += len(parts)
            answers: List[Optional[Generation]] = [None] * len(parts)
            chunks = self._chunks([p for _, p in parts])
            await asyncio.gather(*(self._run_chunk([parts[k][1] for k in idx], deadline, idx, answers)
                                   for idx in chunks))
            got = 0
            for (i, part), answer in zip(parts, answers):
                if answer is not None:
                    room = seeded[i].n - len(choices[i])
                    choices[i].extend(answer.choices[:room])
                    got += min(len(answer.choices), room)
            rounds += 1
            if got == 0:
                return

    def _parts(self, request: GenerationRequest, missing: int, round_index: int) -> List[GenerationRequest]:
        """Requests for `missing` more choices of `request`, at most the choices cap each. Each
        part of a seeded request gets a seed of its own, so no two parts sample the same votes."""
        cap = self._choices_cap() or missing
        sizes = [min(cap, missing - k) for k in range(0, missing, cap)]
        if request.seed is None or (len(sizes) == 1 and round_index == 0):
            return [replace(request, n=size) for size in sizes]
        return [replace(request, n=size, seed=_derived_seed(request.seed, round_index, k))
                for k, size in enumerate(sizes)]

    def _choices_cap(self) -> Optional[int]:
        """max_choices_per_request, else the fewest choices any endpoint was seen to answer."""
        if self._cfg.max_choices_per_request is not None:
            return self._cfg.max_choices_per_request
        learned = [e.max_choices for e in self._pool.endpoints if e.max_choices is not None]
        return min(learned) if learned else None

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
                self._learn_choices(endpoint, chunk, generations)
                ok = True
                return
            except _LogprobsRejected:
                if endpoint.logprobs_supported:
                    logger.warning("%s: endpoint %s rejects log-probs; asking it without them (votes "
                                   "are then read from the answer text)", self._section, endpoint.url)
                endpoint.logprobs_supported = False
                self.counters["logprobs_rejected"] += 1
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

    def _learn_choices(self, endpoint: Endpoint, chunk: List[GenerationRequest],
                       generations: List[Generation]) -> None:
        """A server that answered fewer choices than asked is a valid server that ignores `n`
        (or caps it): remember how many it gives, ask for the rest elsewhere and in later rounds."""
        short = [(r.n, len(g.choices)) for r, g in zip(chunk, generations) if len(g.choices) < r.n]
        if not short:
            return
        self.counters["short_choice_lists"] += len(short)
        given = max(1, min(got for _, got in short))
        if endpoint.max_choices is None or given < endpoint.max_choices:
            logger.warning("%s: endpoint %s answered %d choice(s) where n=%d was asked; asking it for "
                           "at most %d per request from now on", self._section, endpoint.url,
                           min(got for _, got in short), max(n for n, _ in short), given)
            endpoint.max_choices = given

    async def _backoff(self, attempt: int, deadline: float) -> None:
        cap = self._cfg.retry_backoff_s * min(2.0 ** (attempt - 1), _BACKOFF_CAP_FACTOR)
        delay = self._rng.uniform(0.0, cap)  # full jitter: retries of a burst do not align
        await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))

    async def _post(self, endpoint: Endpoint, chunk: List[GenerationRequest]) -> List[Generation]:
        api = self._cfg.api
        path = wire.CHAT_PATH if api == "chat" else wire.COMPLETIONS_PATH
        asks_logprobs = endpoint.logprobs_supported and chunk[0].top_logprobs > 0
        body = wire.request_body(api, self.model, chunk, with_logprobs=asks_logprobs)
        try:
            async with self._session.post(endpoint.url + path, json=body) as response:
                raw = await self._read_capped(response)
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

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, read in chunks and abandoned past `max_response_bytes`: a misbehaving server
        cannot make this process hold more than that per request."""
        cap = self._cfg.max_response_bytes
        if response.content_length is not None and response.content_length > cap:
            self.counters["oversized_responses"] += 1
            raise _AttemptFailed(f"response body of {response.content_length} bytes is over "
                                 f"{self._section}.max_response_bytes={cap}")
        parts: List[bytes] = []
        size = 0
        async for piece in response.content.iter_chunked(_READ_CHUNK_BYTES):
            size += len(piece)
            if size > cap:
                self.counters["oversized_responses"] += 1
                raise _AttemptFailed(f"response body over {self._section}.max_response_bytes={cap} bytes")
            parts.append(piece)
        return b"".join(parts)

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

    def _seeded(self, request: GenerationRequest) -> GenerationRequest:
        """With `request_seed`, each prompt gets a seed of its own derived from its text."""
        if self._cfg.request_seed is None or request.seed is not None:
            return request
        digest = hashlib.sha256(f"{self._cfg.request_seed}:{request.prompt}".encode()).digest()
        return replace(request, seed=int.from_bytes(digest[:4], "little") & 0x7FFFFFFF)

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
                    f"{self._section}.endpoints: none answered {wire.HEALTH_PATH} (or {wire.MODELS_PATH}) within "
                    f"{self._cfg.health_timeout_s:.0f}s: {problems}. Start the servers or fix the URLs")
            await asyncio.sleep(_HEALTH_POLL_S)

    async def _probe(self, url: str, timeout_s: float) -> Optional[str]:
        """None when ready, else what went wrong. A server without a /health route (404, e.g.
        llama-cpp-python's) is ready once /v1/models lists a model."""
        status, problem = await self._get_status(url + wire.HEALTH_PATH, timeout_s)
        if status == 200:
            return None
        if status != 404:
            return problem
        status, models_problem = await self._get_status(url + wire.MODELS_PATH, timeout_s, models=True)
        if status == 200:
            return None
        return f"{wire.HEALTH_PATH}: HTTP 404, {wire.MODELS_PATH}: {models_problem}"

    async def _get_status(self, url: str, timeout_s: float, *,
                          models: bool = False) -> Tuple[Optional[int], str]:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._session.get(url, timeout=timeout) as response:
                raw = await self._read_capped(response)
                if response.status == 200 and models:
                    if not wire.parse_model_ids(json.loads(raw)):
                        return None, "lists no model"
                return response.status, f"HTTP {response.status}"
        except (json.JSONDecodeError, UnicodeDecodeError, wire.SchemaError) as exc:
            return None, f"not a model list ({exc})"
        except _AttemptFailed as exc:
            return None, str(exc)
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as exc:
            return None, type(exc).__name__

    async def _discover_model(self, url: str) -> str:
        timeout = aiohttp.ClientTimeout(total=self._cfg.request_timeout_s)
        try:
            async with self._session.get(url + wire.MODELS_PATH, timeout=timeout) as response:
                payload = json.loads(await self._read_capped(response))
            ids = wire.parse_model_ids(payload)
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError, json.JSONDecodeError,
                UnicodeDecodeError, wire.SchemaError, _AttemptFailed) as exc:
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


def _derived_seed(seed: int, round_index: int, part: int) -> int:
    """The seed of one part of a split request: distinct per part, reproducible from the seed."""
    digest = hashlib.sha256(f"{seed}:{round_index}:{part}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
