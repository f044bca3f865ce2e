"""`megatron-sip serve`'s guards on a real server process (SmolLM2): a bearer key on /v1 routes,
request limits, a bounded queue answering 429, per-request validation that never fails another
request, and a per-request deadline that frees the generation thread."""

from __future__ import annotations

import asyncio
import time
from typing import Iterator, Tuple

import aiohttp
import pytest

from megatron_sip.serve.launcher import ServeProcess
from tests.conftest import REPO_ROOT
from tests.launch import cli_env

pytestmark = pytest.mark.slow
KEY = "sip-test-key-7f3a"


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory) -> Iterator[str]:
    from megatron_sip.embedded import EmbeddedModelMissing, embedded_gguf_path

    try:
        embedded_gguf_path()
    except EmbeddedModelMissing as exc:
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("guarded")
    key_file = folder / "key"
    key_file.write_text(KEY + "\n")
    env = cli_env()
    env.pop("SIP_SERVE_API_KEY", None)
    server = ServeProcess(["--model", "embedded", "--max-batch-size", "2", "--max-queue", "3", "--max-tokens-cap", "64",
                           "--max-prompts-per-request", "2", "--request-timeout-s", "3", "--api-key-file", str(key_file)],
                          log_path=folder / "serve.log", env=env, cwd=REPO_ROOT, ready_timeout_s=240)
    with server as url:
        assert "API key required" in server.ready_line and KEY not in server.ready_line
        yield url


async def _post(session: aiohttp.ClientSession, url: str, body, *, key: str = KEY) -> Tuple[int, dict, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with session.post(url + "/v1/completions", json=body, headers=headers) as response:
        return response.status, await response.json(), dict(response.headers)


def _run(coroutine):
    async def main():
        async with aiohttp.ClientSession() as session:
            return await coroutine(session)
    return asyncio.run(main())


def test_the_key_guards_v1_routes_and_health_stays_open(guarded_server):
    async def check(session):
        async with session.get(guarded_server + "/health") as health:
            assert health.status == 200
        async with session.get(guarded_server + "/v1/models") as models:
            assert models.status == 401 and (await models.json())["error"]["type"] == "authentication_error"
        async with session.get(guarded_server + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}) as models:
            assert models.status == 200
        assert (await _post(session, guarded_server, {"prompt": "Hi", "max_tokens": 1}, key="wrong"))[0] == 401
        assert (await _post(session, guarded_server, {"prompt": "Hi", "max_tokens": 1}, key=""))[0] == 401
        status, body, _ = await _post(session, guarded_server, {"prompt": "Hi", "max_tokens": 1, "temperature": 0})
        assert status == 200 and len(body["choices"]) == 1
    _run(check)


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": 65}, "max_tokens"),
    ({"prompt": "x", "max_completion_tokens": 10**9}, "max_tokens"),
    ({"prompt": ["a", "b", "c"], "max_tokens": 1}, "prompt"),
    ({"prompt": "x", "max_tokens": 1, "seed": 2**64}, "seed"),
    ({"prompt": "x", "max_tokens": 1, "seed": -1}, "seed"),
    ({"prompt": "x", "max_tokens": 1, "n": 17}, "n"),
    ({"prompt": "x", "max_tokens": 1, "logprobs": 21}, "logprobs"),
])
def test_requests_over_the_limits_are_400s(guarded_server, body, param):
    status, answer, _ = _run(lambda session: _post(session, guarded_server, body))
    assert status == 400 and answer["error"]["param"] in (param, "max_completion_tokens")


def test_a_bad_request_never_fails_the_good_ones_sent_with_it(guarded_server):
    good = {"prompt": "The sky is", "max_tokens": 2, "temperature": 1.0, "seed": 2**63 - 1}
    bad = dict(good, seed=2**64)

    async def burst(session):
        return await asyncio.gather(_post(session, guarded_server, good), _post(session, guarded_server, bad),
                                    _post(session, guarded_server, good))
    statuses = [status for status, _, _ in _run(burst)]
    assert statuses == [200, 400, 200]


def test_a_full_queue_answers_429_with_retry_after(guarded_server):
    # One token each, so what is admitted is answered well within the server's 3 s deadline.
    body = {"prompt": "Count to ten:", "max_tokens": 1, "temperature": 0}

    async def burst(session):
        return await asyncio.gather(*(_post(session, guarded_server, body) for _ in range(10)))
    answers = _run(burst)
    statuses = sorted(status for status, _, _ in answers)
    assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}
    busy = [headers for status, _, headers in answers if status == 429]
    assert all(int(h["Retry-After"]) >= 1 for h in busy)


def test_the_deadline_answers_504_and_frees_the_generation_thread(guarded_server):
    async def slow_then_quick(session):
        # 64 tokens x 2 prompts x n=4 on 2 cores take longer than the server's 3 s deadline.
        slow = {"prompt": ["Write a long story:", "Write a long poem:"], "max_tokens": 64, "n": 4,
                "temperature": 1.0}
        start = time.monotonic()
        status, answer, _ = await _post(session, guarded_server, slow)
        waited = time.monotonic() - start
        start = time.monotonic()
        quick = await _post(session, guarded_server, {"prompt": "Hi", "max_tokens": 1, "temperature": 0})
        return status, answer, waited, quick[0], time.monotonic() - start
    status, answer, waited, quick_status, quick_s = _run(slow_then_quick)
    assert status == 504 and answer["error"]["type"] == "timeout_error"
    assert waited < 10
    assert quick_status == 200 and quick_s < 10  # the cut generation did not keep the thread
