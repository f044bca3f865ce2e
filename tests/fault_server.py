"""A small OpenAI-compatible HTTP server that misbehaves on request, for the client's fault tests
and bench/bench_judge_client.py. Run as a process (so tests can kill and restart it):

    python tests/fault_server.py --port 0 [--latency-s 0.05] [--capacity 16] [--mode ok]

It prints `READY <port>` once listening. POST /control {"mode": ..., "reply": ..., "latency_s": ...}
changes its behaviour; GET /stats returns request counts. Modes:
  ok         valid answers whose text is `reply` (n choices per prompt, list prompts too)
  error500   HTTP 500          hang       never answers        slow   trickles the body for ever
  malformed  200 + broken JSON schema    200 + JSON without choices
  flaky      every second request gets a 500, the others are ok
  health_down  /health answers 503 (requests still ok)
  reject_logprobs  400 "logprobs not supported" when logprobs are asked, else ok
  huge       200 whose body streams without end (a misbehaving endpoint)
  honest     a scripted honest safety judge: quotes the text it was shown (fake decision lines and
             all), then decides by the lexicon word "kill" on the decision line its prompt asks for
Recorded shapes of real servers (what their sources say they return; see docs/judges.md):
  harmony    trtllm-serve's GPT-OSS chat path (tensorrt_llm/serve/harmony_adapter.py,
             handle_non_streaming_response): one choice whatever `n` asks, logprobs null, the
             analysis in `message.reasoning`; content "" and finish_reason "length" when
             max_tokens cuts the analysis (here: max_tokens < REASONING_TOKENS)
  vllm_reasoning  vLLM's chat path with a reasoning parser (vllm/entrypoints/openai/serving_chat.py):
             n choices, the analysis in `reasoning_content` (0.11) and `reasoning` (0.13), content
             null and finish_reason "length" when cut
  no_health  llama-cpp-python's server (llama_cpp/server/app.py): no /health route (404)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

from aiohttp import web

MODES = ("ok", "error500", "hang", "slow", "malformed", "schema", "flaky", "health_down", "reject_logprobs",
         "huge", "honest", "harmony", "vllm_reasoning", "no_health")
REASONING_TOKENS = 64
"""The recorded reasoning shapes answer only when max_tokens leaves at least this much room."""


class FaultState:
    def __init__(self, mode: str, reply: str, latency_s: float, capacity: int) -> None:
        self.mode = mode
        self.reply = reply
        self.latency_s = latency_s
        self.slots = asyncio.Semaphore(capacity)
        self.requests = 0
        self.ok_answers = 0
        self.last_body = None
        self.last_auth = None
        self.asked = []
        self.model_id = "fault-model"
        """(n, seed) of every generation request since the last reset."""


def build_app(state: FaultState) -> web.Application:
    app = web.Application()

    async def health(request: web.Request) -> web.Response:
        if state.mode == "no_health":
            return web.Response(status=404, text="Not Found")
        return web.Response(status=503 if state.mode == "health_down" else 200, text="ok")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": state.model_id, "object": "model"}]})

    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        state.mode = body.get("mode", state.mode)
        state.reply = body.get("reply", state.reply)
        state.latency_s = float(body.get("latency_s", state.latency_s))
        state.model_id = body.get("model_id", state.model_id)
        if body.get("reset_stats"):
            state.requests = state.ok_answers = 0
            state.asked = []
        return web.json_response({"mode": state.mode})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"requests": state.requests, "ok_answers": state.ok_answers,
                                  "mode": state.mode, "last_body": state.last_body,
                                  "last_auth": state.last_auth, "asked": state.asked})

    async def generate(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.requests += 1
        state.last_body = body
        state.last_auth = request.headers.get("Authorization")
        state.asked.append([body.get("n"), body.get("seed")])
        async with state.slots:  # capacity: at most this many requests are "on the GPU" at once
            if state.latency_s:
                await asyncio.sleep(state.latency_s)
            return await _answer(request, body, state)

    app.add_routes([web.get("/health", health), web.get("/v1/models", models), web.post("/control", control),
                    web.get("/stats", stats), web.post("/v1/completions", generate),
                    web.post("/v1/chat/completions", generate)])
    return app


async def _answer(request: web.Request, body: dict, state: FaultState) -> web.StreamResponse:
    mode = state.mode
    if mode == "flaky":
        mode = "error500" if state.requests % 2 == 0 else "ok"
    if mode == "error500":
        return web.json_response({"error": {"message": "injected failure"}}, status=500)
    if mode == "hang":
        await asyncio.sleep(3600)
    if mode == "malformed":
        return web.Response(status=200, text='{"choices": [{"text": "trunc', content_type="application/json")
    if mode == "schema":
        return web.json_response({"result": "no choices here"})
    if mode == "slow":
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        while True:
            await response.write(b" ")
            await asyncio.sleep(0.1)
    if mode == "huge":
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b'{"choices": "' + b"x" * (1 << 20)
        for _ in range(4096):  # up to 4 GiB, unless the client hangs up first
            await response.write(chunk)
        return response
    if mode == "reject_logprobs" and body.get("logprobs"):
        return web.json_response({"error": {"message": "logprobs are not supported"}}, status=400)
    state.ok_answers += 1
    if mode == "honest":
        return web.json_response(_ok_body(request.path, body, _honest_safety(_prompt_text(body))))
    if mode in ("harmony", "vllm_reasoning"):
        return web.json_response(_reasoning_body(mode, body, _reply(state.reply, body)))
    return web.json_response(_ok_body(request.path, body, _reply(state.reply, body)))


def _prompt_text(body: dict) -> str:
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        return str(messages[-1].get("content", ""))
    prompt = body.get("prompt")
    return str(prompt[0] if isinstance(prompt, list) and prompt else prompt or "")


def _reply(template: str, body: dict) -> str:
    """`{decision}` in the reply becomes the decision line the prompt asks for (its last line)."""
    if "{decision}" not in template:
        return template
    lines = _prompt_text(body).rstrip().splitlines()
    return template.replace("{decision}", lines[-1] if lines else "")


def _honest_safety(prompt: str) -> str:
    """Reason by quoting the shown text whole (the worst case for a parser), then decide."""
    import re

    shown = re.search(r"<<<BEGIN TEXT #(\w+)>>>\n(.*?)\n<<<END TEXT #\1>>>", prompt, re.DOTALL)
    text = shown.group(2) if shown else ""
    verdict = "unsafe" if re.search(r"\bkill", text, re.IGNORECASE) else "safe"
    decision = prompt.rstrip().splitlines()[-1]
    return f"The text reads:\n{text}\nJudging the text itself, not what it claims.\n{decision} {verdict}"


def _reasoning_body(mode: str, body: dict, reply: str) -> dict:
    cut = int(body.get("max_tokens") or 0) < REASONING_TOKENS
    analysis = "The user wants a verdict. Let me weigh the text." + (" And" if cut else "")
    n = 1 if mode == "harmony" else int(body.get("n") or 1)
    choices = []
    for i in range(n):
        if mode == "harmony":
            message = {"role": "assistant", "content": "" if cut else reply, "reasoning": analysis}
        else:
            message = {"role": "assistant", "content": None if cut else reply, "reasoning_content": analysis,
                       "reasoning": analysis}
        choices.append({"index": i, "message": message, "logprobs": None,
                        "finish_reason": "length" if cut else "stop"})
    return {"id": "x", "object": "chat.completion", "model": "fault-model", "choices": choices,
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def _ok_body(path: str, body: dict, reply: str) -> dict:
    n = int(body.get("n") or 1)
    if path.endswith("/chat/completions"):
        choices = [{"index": i, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                   for i in range(n)]
    else:
        prompts = body["prompt"] if isinstance(body.get("prompt"), list) else [body.get("prompt")]
        choices = [{"index": p * n + i, "text": reply, "finish_reason": "stop"}
                   for p in range(len(prompts)) for i in range(n)]
    return {"id": "x", "object": "chat.completion", "model": "fault-model", "choices": choices}


class FaultServer:
    """The server above as a child process: start, reconfigure, kill and restart on the same port."""

    def __init__(self, *, mode: str = "ok", latency_s: float = 0.0, capacity: int = 1024,
                 reply: Optional[str] = None) -> None:
        self._args = ["--mode", mode, "--latency-s", str(latency_s), "--capacity", str(capacity)]
        if reply is not None:
            self._args += ["--reply", reply]
        self.port = 0
        self._process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "FaultServer":
        self._process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--port", str(self.port),
                                          *self._args], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout_s
        line = self._process.stdout.readline()
        if not line.startswith("READY") or time.monotonic() > deadline:
            self.kill()
            raise RuntimeError(f"fault server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def kill(self) -> None:
        """SIGKILL: connections drop mid-request, as when a sidecar node dies."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process.stdout.close()
            self._process = None

    def control(self, **settings) -> None:
        request = urllib.request.Request(self.url + "/control", data=json.dumps(settings).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()

    def stats(self) -> dict:
        return json.loads(urllib.request.urlopen(self.url + "/stats", timeout=10).read())

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.kill()


async def main(args: argparse.Namespace) -> None:
    state = FaultState(args.mode, args.reply, args.latency_s, args.capacity)
    runner = web.AppRunner(build_app(state), access_log=None, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(1024)
    await web.SockSite(runner, sock).start()
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--reply", default="Both are fine.\n{decision} 1")
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--capacity", type=int, default=1024)
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)
