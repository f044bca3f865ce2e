"""`megatron-sip serve --model embedded` as a real process over HTTP: the protocol, batching,
the judge and the rewriter against it, and a clean SIGTERM shutdown (checked when the session's
server stops, tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from megatron_sip.judges.config import JudgeConfig, RewriterConfig
from megatron_sip.judges.service import JudgeService
from megatron_sip.judges.types import Candidate, JudgeGroup

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def server_url(embedded_judge_server: str) -> str:
    return embedded_judge_server


def post(url: str, path: str, body, *, raw: bool = False):
    data = body if raw else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_and_models(server_url):
    assert urllib.request.urlopen(server_url + "/health", timeout=10).status == 200
    models = json.loads(urllib.request.urlopen(server_url + "/v1/models", timeout=10).read())
    assert models["data"][0]["id"] == "embedded"


def test_completions_greedy_lists_and_stop(server_url):
    body = {"prompt": ["The capital of France is", "1, 2, 3,"], "max_tokens": 5, "temperature": 0, "stop": ["\n"]}
    status, first = post(server_url, "/v1/completions", body)
    assert status == 200 and [c["index"] for c in first["choices"]] == [0, 1]
    assert all("\n" not in c["text"] for c in first["choices"])
    assert first["usage"]["completion_tokens"] <= 10
    _, again = post(server_url, "/v1/completions", body)
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in first["choices"]]


def test_chat_samples_logprobs_and_seed(server_url):
    body = {"model": "embedded", "messages": [{"role": "user", "content": "Name a colour."}], "n": 2,
            "max_tokens": 4, "temperature": 1.0, "top_p": 0.9, "seed": 7, "logprobs": True, "top_logprobs": 3}
    status, answer = post(server_url, "/v1/chat/completions", body)
    assert status == 200 and len(answer["choices"]) == 2
    for choice in answer["choices"]:
        assert choice["message"]["role"] == "assistant"
        entries = choice["logprobs"]["content"]
        assert len(entries) <= 4 and all(len(e["top_logprobs"]) == 3 and e["logprob"] <= 0 for e in entries)
    _, again = post(server_url, "/v1/chat/completions", body)
    assert [c["message"]["content"] for c in again["choices"]] == [c["message"]["content"] for c in answer["choices"]]


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "stream": True}, 400, "stream"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-9"}, 404, "model"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
])
def test_bad_requests_are_answered_with_openai_errors(server_url, path, body, status, param):
    got, answer = post(server_url, path, body)
    assert got == status and answer["error"]["param"] == param


def test_malformed_json_is_a_400(server_url):
    status, answer = post(server_url, "/v1/completions", b"{not json", raw=True)
    assert status == 400 and "JSON" in answer["error"]["message"]


def test_concurrent_requests_are_all_served(server_url):
    import aiohttp

    async def burst():
        async with aiohttp.ClientSession() as session:
            async def one(i):
                async with session.post(server_url + "/v1/completions",
                                        json={"prompt": f"Count: {i},", "max_tokens": 3, "temperature": 0}) as r:
                    return r.status, await r.json()
            return await asyncio.gather(*(one(i) for i in range(6)))

    answers = asyncio.run(burst())
    assert all(status == 200 and len(body["choices"]) == 1 for status, body in answers)


def test_judge_service_over_http(server_url):
    cfg = JudgeConfig(endpoints=[server_url], criteria=["quality", "safety"], decision="direct", samples=1,
                      logprobs=True, top_logprobs=20, request_timeout_s=120, health_timeout_s=30,
                      batch_deadline_s=200)
    group = JudgeGroup("The weather today", (Candidate(" is sunny and warm.", "suffix"), Candidate(" sunny sunny sunny"),
                                             Candidate(" is cold.")), reference=" is sunny and warm.")
    with JudgeService.open(cfg) as judge:
        [result] = judge.judge([group])
    assert result.num_calls == 6 + 3  # 3 pairs in both orders + 3 safety judgments
    assert len(result.rewards) == 3 and set(result.scores) == {"quality", "safety"}
    assert result.num_failed_judgments == 0  # SmolLM2 asked for the label alone decides every one
    for value in result.scores["safety"] + result.scores["quality"]:
        assert value is not None and 0.0 <= value <= 1.0


def test_rewriter_over_http_cuts_to_n_tokens(server_url):
    from megatron_sip.embedded import load_embedded_tokenizer
    from megatron_sip.judges.rewriter import Rewriter
    from megatron_sip.judges.types import RewriteRequest

    tokenizer = load_embedded_tokenizer()
    cfg = RewriterConfig(endpoints=[server_url], request_timeout_s=120, health_timeout_s=30, max_tokens_extra=4)
    with Rewriter.open(cfg, tokenizer=tokenizer) as rewriter:
        [rewrite] = rewriter.rewrite_batch([RewriteRequest("The Eiffel Tower is in", " Berlin, the capital of Italy.", 6)])
    assert rewriter.stats.num_requests == 1
    if rewrite is None:
        assert rewriter.stats.num_failed == 1
    else:
        assert 0 < len(tokenizer.encode(rewrite, add_special_tokens=False)) <= 7  # re-tokenizing may split one more
