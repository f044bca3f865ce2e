"""`megatron-sip serve`: an OpenAI-compatible HTTP server over a local Hugging Face model.

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions. Each
request (each prompt of a list) goes to the `Batcher`, which generates concurrent requests
together on one worker thread. The model loads once before the socket opens, so /health answers
200 only when requests can be served. SIGTERM / SIGINT stop accepting, finish the batch in
progress and exit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from dataclasses import replace
from typing import Callable, Optional

from aiohttp import web

from megatron_sip.errors import InputError
from megatron_sip.serve import protocol
from megatron_sip.serve.batcher import Batcher, BatcherStopped
from megatron_sip.serve.generator import LocalGenerator, LocalRequest

logger = logging.getLogger(__name__)

_BATCHER = web.AppKey("batcher", Batcher)
_GENERATOR = web.AppKey("generator", LocalGenerator)


def build_app(generator: LocalGenerator, batcher: Batcher) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_GENERATOR] = generator
    app[_BATCHER] = batcher
    app.add_routes([web.get("/health", _health), web.get("/v1/models", _models),
                    web.post("/v1/completions", _completions),
                    web.post("/v1/chat/completions", _chat)])
    return app


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _models(request: web.Request) -> web.Response:
    return web.json_response(protocol.models_body(request.app[_GENERATOR].name))


async def _completions(request: web.Request) -> web.Response:
    return await _answer(request, chat=False)


async def _chat(request: web.Request) -> web.Response:
    return await _answer(request, chat=True)


async def _answer(request: web.Request, *, chat: bool) -> web.Response:
    generator, batcher = request.app[_GENERATOR], request.app[_BATCHER]
    try:
        body = json.loads(await request.read())
        parsed = protocol.parse(body, chat=chat, served_model=generator.name)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(protocol.RequestError(None, f"the body is not valid JSON: {exc}"))
    except protocol.RequestError as exc:
        return _error(exc)
    if chat:
        prompts = [generator.chat_prompt(list(parsed.messages))]
    else:
        prompts = list(parsed.prompts)
    local = [LocalRequest(replace(parsed.params, prompt=p), add_special_tokens=not chat) for p in prompts]
    try:
        outputs = await asyncio.gather(*(batcher.submit(r) for r in local))
    except BatcherStopped as exc:
        return web.json_response({"error": {"message": str(exc), "type": "server_error"}}, status=503)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        logger.error("generation failed: %s", exc)
        return web.json_response({"error": {"message": f"generation failed: {exc}", "type": "server_error"}},
                                 status=500)
    with_logprobs = parsed.params.top_logprobs > 0
    if chat:
        return web.json_response(protocol.chat_body(generator.name, outputs[0], with_logprobs=with_logprobs))
    return web.json_response(protocol.completion_body(generator.name, outputs, with_logprobs=with_logprobs))


def _error(exc: protocol.RequestError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status)


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


async def serve(model: str, *, host: str, port: int, max_batch_size: int,
                on_ready: Callable[[str], None], stop: Optional[asyncio.Event] = None) -> None:
    """Load `model`, serve until SIGTERM/SIGINT (or `stop` is set), then shut down cleanly."""
    sock = bind_socket(host, port)  # first, so a taken port fails before a long model load
    try:
        generator = await asyncio.to_thread(LocalGenerator, model, max_batch_size=max_batch_size)
    except BaseException:
        sock.close()
        raise
    batcher = Batcher(generator, max_batch_size=max_batch_size)
    batcher.start()
    # handler_cancellation: a client that gave up (timeout, deadline, killed) cancels its handler,
    # whose queued request the batcher then drops instead of generating for nobody.
    runner = web.AppRunner(build_app(generator, batcher), access_log=None, handler_cancellation=True)
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
