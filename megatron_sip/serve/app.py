"""`megatron-sip serve`: an OpenAI-compatible HTTP server over a local Hugging Face model.

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions. Each
request (each prompt of a list) goes to the `Batcher`, which generates concurrent requests
together on one worker thread. The model loads once before the socket opens, so /health answers
200 only when requests can be served. SIGTERM / SIGINT stop accepting, finish the batch in
progress and exit.

Guards, so that one client cannot take the server from the others: `Limits` per request (HTTP 400
above them), a bounded queue (429 with Retry-After when full), a per-request deadline (504; the
generation is cut there), and with `api_key` a bearer key on every /v1 route (401 without it;
/health stays open for health gates).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import socket
import time
from dataclasses import dataclass, replace
from typing import Awaitable, Callable, Optional

from aiohttp import web

from megatron_sip.errors import InputError
from megatron_sip.serve import protocol
from megatron_sip.serve.batcher import Batcher, BatcherFull, BatcherStopped
from megatron_sip.serve.generator import LocalGenerator, LocalRequest

logger = logging.getLogger(__name__)

_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ServeOptions:
    """The server's guards (flags of `megatron-sip serve`)."""

    limits: protocol.Limits = protocol.Limits()
    request_timeout_s: float = 600.0
    """Longest a request may take from arrival to answer; past it: HTTP 504."""
    api_key: Optional[str] = None
    """Bearer key required on /v1 routes; None = open (bind 127.0.0.1 then)."""


_BATCHER = web.AppKey("batcher", Batcher)
_GENERATOR = web.AppKey("generator", LocalGenerator)
_OPTIONS = web.AppKey("options", ServeOptions)


def build_app(generator: LocalGenerator, batcher: Batcher, options: ServeOptions = ServeOptions()) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_require_key])
    app[_GENERATOR] = generator
    app[_BATCHER] = batcher
    app[_OPTIONS] = options
    app.add_routes([web.get("/health", _health), web.get("/v1/models", _models),
                    web.post("/v1/completions", _completions),
                    web.post("/v1/chat/completions", _chat)])
    return app


@web.middleware
async def _require_key(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    key = request.app[_OPTIONS].api_key
    if key is None or not request.path.startswith("/v1/"):
        return await handler(request)
    given = request.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    # compare_digest: the time taken does not tell how much of a guessed key was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        return _error(protocol.RequestError(None, "missing or wrong API key (send Authorization: Bearer KEY)",
                                            status=401))
    return await handler(request)


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _models(request: web.Request) -> web.Response:
    return web.json_response(protocol.models_body(request.app[_GENERATOR].name))


async def _completions(request: web.Request) -> web.Response:
    return await _answer(request, chat=False)


async def _chat(request: web.Request) -> web.Response:
    return await _answer(request, chat=True)


async def _answer(request: web.Request, *, chat: bool) -> web.Response:
    generator, batcher, options = request.app[_GENERATOR], request.app[_BATCHER], request.app[_OPTIONS]
    deadline = time.monotonic() + options.request_timeout_s
    try:
        body = json.loads(await request.read())
        parsed = protocol.parse(body, chat=chat, served_model=generator.name, limits=options.limits)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(protocol.RequestError(None, f"the body is not valid JSON: {exc}"))
    except protocol.RequestError as exc:
        return _error(exc)
    if chat:
        prompts = [generator.chat_prompt(list(parsed.messages))]
    else:
        prompts = list(parsed.prompts)
    local = [LocalRequest(replace(parsed.params, prompt=p), add_special_tokens=not chat, deadline=deadline)
             for p in prompts]
    try:
        futures = batcher.enqueue(local)
    except BatcherFull as exc:
        return _error(protocol.RequestError(None, f"server busy: {exc}; retry later", status=429),
                      headers={"Retry-After": str(_RETRY_AFTER_S)})
    except BatcherStopped as exc:
        return _error(protocol.RequestError(None, str(exc), status=503))
    try:
        outputs = await asyncio.wait_for(asyncio.gather(*futures), timeout=max(deadline - time.monotonic(), 0.0))
    except asyncio.TimeoutError:
        for future in futures:
            future.cancel()  # the batcher drops what has not started
        return _error(protocol.RequestError(None, f"no answer within {options.request_timeout_s:.0f}s "
                                            "(--request-timeout-s)", status=504))
    except BatcherStopped as exc:
        return _error(protocol.RequestError(None, str(exc), status=503))
    except (RuntimeError, ValueError, TypeError, IndexError, OverflowError) as exc:
        logger.error("generation failed: %s", exc)
        return _error(protocol.RequestError(None, f"generation failed: {exc}", status=500))
    with_logprobs = parsed.params.top_logprobs > 0
    if chat:
        return web.json_response(protocol.chat_body(generator.name, outputs[0], with_logprobs=with_logprobs))
    return web.json_response(protocol.completion_body(generator.name, outputs, with_logprobs=with_logprobs))


def _error(exc: protocol.RequestError, *, headers: Optional[dict] = None) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=headers)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (read it back with getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"--host {host} --port {port}: cannot listen ({exc.strerror or exc})") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(model: str, *, host: str, port: int, max_batch_size: int, max_queue: int = 256,
                prefix_cache_tokens: int = 0, options: ServeOptions = ServeOptions(),
                on_ready: Callable[[str], None], stop: Optional[asyncio.Event] = None) -> None:
    """Load `model`, serve until SIGTERM/SIGINT (or `stop` is set), then shut down cleanly."""
    sock = bind_socket(host, port)  # first, so a taken port fails before a long model load
    try:
        generator = await asyncio.to_thread(LocalGenerator, model, max_batch_size=max_batch_size,
                                            prefix_cache_tokens=prefix_cache_tokens)
    except BaseException:
        sock.close()
        raise
    batcher = Batcher(generator, max_batch_size=max_batch_size, max_queue=max_queue)
    batcher.start()
    # handler_cancellation: a client that gave up (timeout, deadline, killed) cancels its handler,
    # whose queued request the batcher then drops instead of generating for nobody.
    runner = web.AppRunner(build_app(generator, batcher, options), access_log=None, handler_cancellation=True)
    await runner.setup()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await web.SockSite(runner, sock).start()
        bound_host, bound_port = sock.getsockname()[:2]
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        on_ready(f"http://{shown_host}:{bound_port}")
        await stop.wait()
        logger.info("shutting down")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        await asyncio.to_thread(batcher.stop)
