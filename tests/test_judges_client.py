"""The HTTP client against a fault-injecting server: every batch returns within its deadline with
each request answered or marked failed, retries go to healthy endpoints, a recovered endpoint is
used again."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from megatron_sip.errors import ConfigError
from megatron_sip.judges.client import OpenAIClient
from megatron_sip.judges.config import JudgeConfig
from megatron_sip.judges.generation import GenerationRequest, JudgeUnavailableError
from tests.fault_server import FaultServer
from tests.launch import free_port

REQUESTS = [GenerationRequest(prompt=f"prompt {i}", n=2, max_tokens=8) for i in range(6)]


@pytest.fixture(scope="module")
def servers():
    with FaultServer() as first, FaultServer() as second:
        yield first, second


@pytest.fixture(autouse=True)
def reset(servers):
    for server in servers:
        server.control(mode="ok", latency_s=0.0, reset_stats=True)


def config(*urls: str, **overrides) -> JudgeConfig:
    settings = dict(endpoints=list(urls), request_timeout_s=0.5, max_retries=2, retry_backoff_s=0.01,
                    circuit_failures=2, circuit_cooldown_s=0.3, health_timeout_s=20.0)
    settings.update(overrides)
    return JudgeConfig(**settings)


async def generate(cfg: JudgeConfig, requests=REQUESTS, *, deadline_s: float = 5.0, timings=None,
                   counters=None, endpoints=None):
    client = OpenAIClient(cfg)
    await client.start()
    try:
        start = time.monotonic()
        results = await client.generate(requests, deadline_s=deadline_s)
        if timings is not None:
            timings.append(time.monotonic() - start)
        if counters is not None:
            counters.update(client.counters)
        if endpoints is not None:
            endpoints.extend(client.endpoints)
        return results
    finally:
        await client.aclose()


def test_answers_and_discovers_model(servers):
    results = asyncio.run(generate(config(servers[0].url)))
    assert all(r is not None and len(r.choices) == 2 for r in results)
    assert results[0].choices[0].text.endswith("prompt 0 1")  # {decision}: the prompt's last line
    assert servers[0].stats()["last_body"]["model"] == "fault-model"


def test_no_endpoint_healthy_at_start_is_an_error_naming_them():
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(JudgeUnavailableError, match=url):
        asyncio.run(generate(config(url, health_timeout_s=0.6)))
    assert time.monotonic() - start < 5.0


def test_missing_endpoints_and_key_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="judge.endpoints"):
        OpenAIClient(JudgeConfig())
    monkeypatch.delenv("SIP_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="judge.api_key_env"):
        OpenAIClient(config("http://127.0.0.1:1", api_key_env="SIP_TEST_KEY"))


def test_http_500_goes_to_the_other_endpoint_and_opens_the_breaker(servers):
    broken, healthy = servers
    broken.control(mode="error500")
    results = asyncio.run(generate(config(broken.url, healthy.url)))
    assert all(r is not None for r in results)
    assert healthy.stats()["ok_answers"] == len(REQUESTS)
    assert broken.stats()["requests"] <= 4  # the breaker opened after 2 consecutive failures


@pytest.mark.parametrize("mode", ["error500", "hang", "slow", "malformed", "schema"])
def test_failing_server_marks_items_failed_within_the_deadline(servers, mode):
    servers[0].control(mode=mode)
    deadline_s, timings = 1.2, []
    results = asyncio.run(generate(config(servers[0].url, request_timeout_s=0.3), deadline_s=deadline_s,
                                   timings=timings))
    assert results == [None] * len(REQUESTS)
    assert timings[0] < deadline_s + 0.3


def test_flaky_server_is_retried_to_success(servers):
    servers[0].control(mode="flaky")
    results = asyncio.run(generate(config(servers[0].url, circuit_failures=100, max_retries=4)))
    assert all(r is not None for r in results)


def test_endpoint_down_at_start_is_used_once_it_recovers(servers):
    healthy = servers[0]
    late = FaultServer()
    late.port = free_port()

    async def scenario():
        client = OpenAIClient(config(healthy.url, late.url, circuit_cooldown_s=0.2))
        await client.start()
        try:
            first = await client.generate(REQUESTS, deadline_s=5.0)
            late.start()
            await asyncio.sleep(0.3)
            second = await client.generate(REQUESTS * 4, deadline_s=5.0)
            return first, second
        finally:
            await client.aclose()

    try:
        first, second = asyncio.run(scenario())
        assert all(r is not None for r in first + second)
        assert late.stats()["ok_answers"] > 0
    finally:
        late.kill()


def test_endpoint_killed_mid_batch_fails_over():
    with FaultServer(latency_s=0.4) as doomed, FaultServer(latency_s=0.05) as survivor:
        async def scenario():
            client = OpenAIClient(config(doomed.url, survivor.url, request_timeout_s=2.0))
            await client.start()
            try:
                task = asyncio.create_task(client.generate(REQUESTS * 3, deadline_s=6.0))
                await asyncio.sleep(0.15)
                doomed.kill()
                return await task
            finally:
                await client.aclose()

        results = asyncio.run(scenario())
        assert all(r is not None for r in results)


def test_logprobs_refusal_falls_back_to_plain_requests(servers):
    servers[0].control(mode="reject_logprobs")
    asking = [GenerationRequest(prompt="p", top_logprobs=5)]
    counters = {}
    results = asyncio.run(generate(config(servers[0].url), asking * 3, counters=counters))
    assert all(r is not None for r in results)
    assert "logprobs" not in servers[0].stats()["last_body"]
    assert 1 <= counters["logprobs_rejected"] <= 3  # counted; later requests no longer ask


# Recorded shapes of real servers (tests/fault_server.py says which upstream file each comes from).

def test_a_server_answering_one_choice_gets_asked_for_the_missing_votes(servers):
    servers[0].control(mode="harmony", reply="ok")
    requests = [GenerationRequest(prompt=f"p{i}", n=5, max_tokens=512, seed=11 + i) for i in range(3)]
    counters, endpoints = {}, []
    results = asyncio.run(generate(config(servers[0].url, circuit_failures=2), requests, counters=counters,
                                   endpoints=endpoints))
    assert [len(r.choices) for r in results] == [5, 5, 5]
    assert counters["short_choice_lists"] >= 1 and counters["follow_up_requests"] >= 4 * 3
    [endpoint] = endpoints
    assert endpoint.num_failures == 0 and endpoint.is_closed and endpoint.max_choices == 1
    asked = servers[0].stats()["asked"]
    seeds = [seed for n, seed in asked if n == 1]
    assert len(seeds) == len(set(seeds))  # every follow-up samples with a seed of its own


def test_once_learned_a_new_batch_asks_one_vote_per_request(servers):
    servers[0].control(mode="harmony", reply="ok")

    async def two_batches():
        client = OpenAIClient(config(servers[0].url))
        await client.start()
        try:
            await client.generate([GenerationRequest(prompt="a", n=3, max_tokens=512)], deadline_s=5.0)
            learned = dict(client.counters)
            servers[0].control(reset_stats=True)
            second = await client.generate([GenerationRequest(prompt="b", n=3, max_tokens=512)], deadline_s=5.0)
            return learned, dict(client.counters), second
        finally:
            await client.aclose()
    learned, after, [second] = asyncio.run(two_batches())
    assert len(second.choices) == 3
    assert [n for n, _ in servers[0].stats()["asked"]] == [1, 1, 1]
    assert after["short_choice_lists"] == learned["short_choice_lists"]


def test_max_choices_per_request_splits_up_front(servers):
    requests = [GenerationRequest(prompt="p", n=5, max_tokens=8)]
    counters = {}
    results = asyncio.run(generate(config(servers[0].url, max_choices_per_request=2), requests, counters=counters))
    assert len(results[0].choices) == 5 and "short_choice_lists" not in counters
    assert sorted(n for n, _ in servers[0].stats()["asked"]) == [1, 2, 2]


@pytest.mark.parametrize("mode", ["harmony", "vllm_reasoning"])
def test_reasoning_shapes_parse_and_a_cut_answer_is_marked(servers, mode):
    servers[0].control(mode=mode, reply="fine")
    full, cut = asyncio.run(generate(config(servers[0].url), [GenerationRequest(prompt="p", max_tokens=512),
                                                              GenerationRequest(prompt="q", max_tokens=8)]))
    assert full.choices[0].text == "fine" and "verdict" in full.choices[0].reasoning
    assert not full.choices[0].cut_off
    assert cut.choices[0].text == "" and cut.choices[0].cut_off


def test_a_server_without_health_is_ready_by_its_model_list(servers):
    servers[0].control(mode="no_health")
    results = asyncio.run(generate(config(servers[0].url)))
    assert all(r is not None for r in results)


def test_a_server_answering_404_everywhere_is_not_ready():
    from aiohttp import web

    async def scenario():
        runner = web.AppRunner(web.Application())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(JudgeUnavailableError, match=r"/health: HTTP 404, /v1/models: HTTP 404"):
                await generate(config(f"http://127.0.0.1:{port}", health_timeout_s=0.6))
        finally:
            await runner.cleanup()
    asyncio.run(scenario())


def test_a_huge_body_is_a_failed_attempt_and_memory_stays_flat(servers):
    import tracemalloc

    servers[0].control(mode="huge")
    counters = {}
    tracemalloc.start()
    try:
        results = asyncio.run(generate(config(servers[0].url, max_retries=1, request_timeout_s=20,
                                              max_response_bytes=4 * 1024 * 1024),
                                       REQUESTS[:2], deadline_s=30, counters=counters))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert results == [None, None]
    assert counters["oversized_responses"] == 4  # 2 requests x (1 try + 1 retry)
    assert peak < 24 * 1024 * 1024  # 4 attempts at the 4 MiB cap, never the stream itself


def test_completions_api_batches_prompts(servers):
    requests = [GenerationRequest(prompt=f"p{i}", n=2) for i in range(8)]
    results = asyncio.run(generate(config(servers[0].url, api="completions", max_prompts_per_request=4), requests))
    assert all(r is not None and len(r.choices) == 2 for r in results)
    assert servers[0].stats()["requests"] == 2


def test_api_key_is_sent_and_never_logged(servers, monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("SIP_TEST_KEY", "s3cret-token")
    caplog.set_level(logging.DEBUG)
    cfg = config(servers[0].url, api_key_env="SIP_TEST_KEY")
    results = asyncio.run(generate(cfg))
    assert results[0] is not None
    assert servers[0].stats()["last_auth"] == "Bearer s3cret-token"
    assert "s3cret" not in caplog.text and "s3cret" not in repr(OpenAIClient(cfg))
    key_file = tmp_path / "key"
    key_file.write_text("file-token\n")
    asyncio.run(generate(config(servers[0].url, api_key_file=str(key_file))))
    assert servers[0].stats()["last_auth"] == "Bearer file-token"
