"""Shared-prefix generation (`megatron-sip serve --prefix-cache-tokens`) against the no-reuse path
(HF `generate`) on the embedded SmolLM2: the same greedy tokens and log-probs within 1e-4, within a
batch (rows sharing a prefix) and across batches (the prefix cache)."""

from __future__ import annotations

import random

import pytest

from megatron_sip.judges.generation import GenerationRequest
from megatron_sip.serve.generator import LocalGenerator, LocalRequest
from megatron_sip.serve.prefix_reuse import MIN_SHARED_TOKENS, PrefixCache, clusters

pytestmark = pytest.mark.slow


class Switched:
    """One loaded model run with prefix reuse off (HF generate) or on: the same server build."""

    def __init__(self, generator: LocalGenerator, tokens: int) -> None:
        self.generator, self.tokens = generator, tokens

    def run(self, requests):
        self.generator.set_prefix_cache_tokens(self.tokens)
        return self.generator.run(requests)

    def chat_prompt(self, messages):
        return self.generator.chat_prompt(messages)


@pytest.fixture(scope="module")
def generators():
    from megatron_sip.embedded import EmbeddedModelMissing, embedded_gguf_path

    try:
        embedded_gguf_path()
    except EmbeddedModelMissing as exc:
        pytest.skip(str(exc))
    generator = LocalGenerator("embedded", max_batch_size=8, prefix_cache_tokens=4096)
    return Switched(generator, 0), Switched(generator, 4096)


def _prompts(rng: random.Random):
    words = "the river city old bridge night rain quiet market song light stone garden".split()
    document = " ".join(rng.choice(words) for _ in range(90))
    endings = ["Is it safe?", "Which continuation is better, 1 or 2?", "Answer yes or no: is the text calm?",
               "Name one word from the text."]
    return [f"Read the document.\n{document}\n{ending}" for ending in endings] + ["Hello there, how"]


def _run(generator: LocalGenerator, prompts, *, max_tokens: int, top_logprobs: int = 5, chat: bool = True):
    requests = []
    for prompt in prompts:
        text = generator.chat_prompt([{"role": "user", "content": prompt}]) if chat else prompt
        requests.append(LocalRequest(GenerationRequest(prompt=text, n=1, temperature=0.0, max_tokens=max_tokens,
                                                       top_logprobs=top_logprobs), add_special_tokens=not chat))
    return generator.run(requests)


def _assert_same(plain_outputs, shared_outputs):
    for plain, shared in zip(plain_outputs, shared_outputs):
        a, b = plain.generation.choices[0], shared.generation.choices[0]
        assert a.text == b.text and a.finish_reason == b.finish_reason
        assert plain.prompt_tokens == shared.prompt_tokens
        assert len(a.logprobs) == len(b.logprobs)
        for x, y in zip(a.logprobs, b.logprobs):
            assert x.token == y.token and abs(x.logprob - y.logprob) < 1e-4
            common = set(x.top) & set(y.top)
            assert len(common) >= len(x.top) - 1  # near-ties at the tail of the top-k may swap
            assert all(abs(x.top[t] - y.top[t]) < 1e-4 for t in common)


def test_greedy_tokens_and_logprobs_match_the_no_reuse_path(generators):
    plain, shared = generators
    prompts = _prompts(random.Random(3))
    _assert_same(_run(plain, prompts, max_tokens=6), _run(shared, prompts, max_tokens=6))
    # Again: now the prefixes come from the cache of the first batch.
    cache = shared.generator.prefix_cache  # on: the last run was the reuse path
    hits = cache.hits_tokens
    _assert_same(_run(plain, prompts[:2], max_tokens=6), _run(shared, prompts[:2], max_tokens=6))
    assert shared.generator.prefix_cache is cache and cache.hits_tokens > hits


def test_one_token_judgments_and_raw_prompts_match(generators):
    plain, shared = generators
    prompts = _prompts(random.Random(4))
    _assert_same(_run(plain, prompts, max_tokens=1, top_logprobs=20),
                 _run(shared, prompts, max_tokens=1, top_logprobs=20))
    _assert_same(_run(plain, prompts, max_tokens=3, chat=False), _run(shared, prompts, max_tokens=3, chat=False))


def test_seeded_sampling_is_reproducible(generators):
    _, shared = generators
    request = LocalRequest(GenerationRequest(prompt="Tell me a colour:", n=3, temperature=1.0, top_p=0.9,
                                             max_tokens=5, seed=7), add_special_tokens=True)
    first, again = shared.run([request]), shared.run([request])
    assert first[0].generation.texts == again[0].generation.texts


def test_clusters_and_cache_bounds():
    shared_start = list(range(100, 100 + MIN_SHARED_TOKENS))
    prompts = [shared_start + [1, 2], [7, 8, 9], shared_start + [3], shared_start[:-1] + [5]]
    assert sorted(sorted(c) for c in clusters(prompts)) == [[0, 2], [1], [3]]
    # Two groups' prompts share the instructions only: one cluster per group's document prefix.
    instructions, doc_a, doc_b = list(range(40)), list(range(1000, 1100)), list(range(2000, 2100))
    rows = [instructions + doc_a + [1], instructions + doc_b + [2], instructions + doc_a + [3],
            instructions + doc_b + [4], instructions + doc_a + [5]]
    assert sorted(sorted(c) for c in clusters(rows)) == [[0, 2, 4], [1, 3]]

    class FakeKV:  # only what PrefixCache needs of a KV cache: copying and cropping
        def __init__(self, length):
            self.length = length

        def get_seq_length(self):
            return self.length

        def crop(self, remove):
            assert remove < 0
            self.length += remove

    cache = PrefixCache(max_tokens=120)
    cache.put(list(range(60)), FakeKV(60))
    cache.put(list(range(50, 100)), FakeKV(50))
    found, kv = cache.longest(list(range(40)) + [999])
    assert found == 40 and kv.length == 40
    cache.put(list(range(200, 260)), FakeKV(60))  # over the budget: the least recently used goes
    assert cache.longest(list(range(50, 100)))[0] == 0
    assert cache.longest(list(range(60)))[0] == 60
