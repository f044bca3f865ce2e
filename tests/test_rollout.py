"""Rollouts on one rank: cached decoding against full-recompute forward passes, the sampling
distribution against the model's, and the generator's contract with the trainer (modes, memory,
seeds, masking).

Legend: P prefixes, K samples, N new tokens, S sequence length, V vocabulary.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any, Dict, List

import pytest
import torch

from megatron_sip.rollout import RolloutGenerator, SamplingParams, mcore
from megatron_sip.rollout.sampling import invert_cdf, sampling_logprobs
from tests.rollout_worker import EOD_ID, GENERATE_KWARGS, PREFIXES, SEED, VOCAB_SIZE, build_policy, tiny_model_config

pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def policy():
    from megatron_sip.parallel import destroy_parallel, init_parallel

    cfg = tiny_model_config()
    ctx = init_parallel(cfg, seed=SEED)
    model = build_policy(cfg, ctx)
    yield model, ctx
    destroy_parallel()


@pytest.fixture(params=["layers", "static"])
def engine(request) -> str:
    """Every test of the generator's contract runs on both engines (the `layers` default and the
    `static` fallback)."""
    return request.param


@pytest.fixture
def generator(policy, engine) -> RolloutGenerator:
    model, ctx = policy
    model.train()
    generator = RolloutGenerator([model], ctx, eod_id=EOD_ID, vocab_size=VOCAB_SIZE, engine=engine)
    assert generator.engine.name == engine
    return generator


@torch.no_grad()
def full_logits(model: Any, tokens: List[int]) -> torch.Tensor:
    """[S, V] float32 logits of one sequence by a plain forward pass (no cache)."""
    was_training = model.training
    model.eval()
    tokens_1S = torch.tensor([tokens])
    logits_1SV = model(tokens_1S, torch.arange(len(tokens))[None], None, runtime_gather_output=True)
    model.train(was_training)
    return logits_1SV[0].float()


def sample_tokens(batch, p: int, k: int) -> List[int]:
    return batch.tokens_PKN[p, k, :int(batch.lengths_PK[p, k])].tolist()


# -- cached decoding equals full recompute ---------------------------------------------------------
def test_greedy_equals_argmax_of_full_recompute(policy, generator) -> None:
    model, _ = policy
    batch = generator.generate(PREFIXES, num_samples=2, max_new_tokens=12, temperature=0.0)
    for p, prefix in enumerate(PREFIXES):
        assert torch.equal(batch.tokens_PKN[p, 0], batch.tokens_PKN[p, 1])  # greedy: samples agree
        sequence = list(prefix)
        for step in range(int(batch.lengths_PK[p, 0])):
            expected = int(full_logits(model, sequence)[-1, :VOCAB_SIZE].argmax())
            assert int(batch.tokens_PKN[p, 0, step]) == expected, (p, step)
            sequence.append(expected)
        assert batch.logprobs_sampling_PKN[p].abs().max() == 0.0


@pytest.mark.parametrize("params, vocab_size", [
    (SamplingParams(), VOCAB_SIZE),  # sampling log-probs are the model's: reused
    (SamplingParams(temperature=0.8, top_p=0.9, top_k=20), VOCAB_SIZE),
    (SamplingParams(), VOCAB_SIZE - 3),  # the last 3 ids play the embedding's padding
], ids=["t1", "t0.8-top-p-top-k", "padded-vocab"])
def test_logprobs_equal_a_forward_pass_over_prefix_and_sample(policy, engine, params, vocab_size) -> None:
    model, ctx = policy
    generator = RolloutGenerator([model], ctx, eod_id=EOD_ID, vocab_size=vocab_size, engine=engine)
    batch = generator.generate(PREFIXES, num_samples=3, max_new_tokens=8, temperature=params.temperature,
                               top_p=params.top_p, top_k=params.top_k, seed=3)
    assert int(batch.tokens_PKN.max()) < vocab_size
    for p, prefix in enumerate(PREFIXES):
        for k in range(3):
            sample = sample_tokens(batch, p, k)
            logits_SV = full_logits(model, list(prefix) + sample)[len(prefix) - 1:-1]
            targets_S1 = torch.tensor(sample)[:, None]
            model_S = torch.log_softmax(logits_SV, dim=-1).gather(-1, targets_S1).squeeze(-1)
            sampling_S = sampling_logprobs(logits_SV[:, :vocab_size], params).gather(-1, targets_S1).squeeze(-1)
            n = len(sample)
            torch.testing.assert_close(batch.logprobs_model_PKN[p, k, :n], model_S, atol=1e-5, rtol=0)
            torch.testing.assert_close(batch.logprobs_sampling_PKN[p, k, :n], sampling_S, atol=1e-5, rtol=0)


def test_prefix_is_encoded_once_for_its_samples(policy, generator) -> None:
    model, _ = policy
    shapes: List[torch.Size] = []
    # Both engines embed through the model's embedding module (the tokens it is given, [B, S]).
    handle = model.embedding.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(kwargs["input_ids"].shape), with_kwargs=True)
    try:
        generator.generate([PREFIXES[0]], num_samples=5, max_new_tokens=4, seed=1)
    finally:
        handle.remove()
    prefix_len = len(PREFIXES[0])
    assert shapes == [torch.Size([1, prefix_len])] + [torch.Size([5, 1])] * 3


def test_mixed_lengths_in_one_batch_equal_one_at_a_time(generator) -> None:
    together = generator.generate(PREFIXES, **GENERATE_KWARGS)
    for p, prefix in enumerate(PREFIXES):
        alone = generator.generate([prefix], **{**GENERATE_KWARGS, "prefix_ids": [GENERATE_KWARGS["prefix_ids"][p]]})
        assert torch.equal(together.tokens_PKN[p], alone.tokens_PKN[0])
        assert torch.equal(together.lengths_PK[p], alone.lengths_PK[0])
        torch.testing.assert_close(together.logprobs_model_PKN[p], alone.logprobs_model_PKN[0], atol=1e-5, rtol=0)


def test_padded_tensor_input_equals_token_lists(generator) -> None:
    lengths = [len(p) for p in PREFIXES]
    padded_PL = torch.full((len(PREFIXES), max(lengths)), EOD_ID)
    for p, prefix in enumerate(PREFIXES):
        padded_PL[p, :len(prefix)] = torch.tensor(prefix)
    from_lists = generator.generate(PREFIXES, **GENERATE_KWARGS)
    from_tensor = generator.generate(padded_PL, prefix_lengths=lengths, **GENERATE_KWARGS)
    assert torch.equal(from_lists.tokens_PKN, from_tensor.tokens_PKN)


def test_pass_size_limit_does_not_change_results(policy, generator) -> None:
    model, ctx = policy
    small = RolloutGenerator([model], ctx, eod_id=EOD_ID, vocab_size=VOCAB_SIZE, max_rows_per_pass=3)
    assert torch.equal(generator.generate(PREFIXES, **GENERATE_KWARGS).tokens_PKN,
                       small.generate(PREFIXES, **GENERATE_KWARGS).tokens_PKN)


# -- the sampling distribution --------------------------------------------------------------------
def chi_square_p_value(counts_V: torch.Tensor, probs_V: torch.Tensor) -> float:
    """Pearson's test of counts against probabilities; cells expecting < 5 draws are pooled."""
    expected_V = probs_V.double() * counts_V.sum()
    small = expected_V < 5
    observed = torch.cat([counts_V[~small].double(), counts_V[small].double().sum()[None]])
    expected = torch.cat([expected_V[~small], expected_V[small].sum()[None]])
    keep = expected > 0
    statistic = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), statistic / 2))


def first_token_counts(generator, prefix, num_samples: int, **kwargs) -> torch.Tensor:
    batch = generator.generate([prefix], num_samples=num_samples, max_new_tokens=1, **kwargs)
    return torch.bincount(batch.tokens_PKN[0, :, 0], minlength=VOCAB_SIZE)


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=0.7, top_k=12)],
                         ids=["t1", "t0.7-top12"])
def test_sampled_frequencies_match_model_probabilities(policy, generator, params) -> None:
    model, _ = policy
    prefix = PREFIXES[0]
    probs_V = sampling_logprobs(full_logits(model, prefix)[-1, :VOCAB_SIZE], params).exp()
    counts_V = first_token_counts(generator, prefix, 4000, temperature=params.temperature, top_k=params.top_k, seed=5)
    assert chi_square_p_value(counts_V, probs_V) > 1e-3
    if params.top_k:
        assert counts_V[probs_V == 0].sum() == 0


def test_chi_square_detects_the_wrong_temperature(policy, generator) -> None:
    """The test above has power: draws at temperature 1 are rejected against temperature 0.7."""
    model, _ = policy
    prefix = PREFIXES[0]
    wrong_V = sampling_logprobs(full_logits(model, prefix)[-1, :VOCAB_SIZE], SamplingParams(temperature=0.7)).exp()
    assert chi_square_p_value(first_token_counts(generator, prefix, 4000, seed=5), wrong_V) < 1e-6


def test_top_p_excludes_tokens_outside_the_nucleus(policy, generator) -> None:
    model, _ = policy
    prefix, top_p = PREFIXES[1], 0.6
    probs_V = torch.softmax(full_logits(model, prefix)[-1, :VOCAB_SIZE], dim=-1)
    sorted_V, order_V = torch.sort(probs_V, descending=True)
    size = int((torch.cumsum(sorted_V, 0) < top_p).sum()) + 1  # smallest prefix reaching top_p
    nucleus = set(order_V[:size].tolist())
    assert 1 < size < VOCAB_SIZE
    batch = generator.generate([prefix], num_samples=2000, max_new_tokens=1, top_p=top_p, seed=2)
    drawn = set(batch.tokens_PKN[0, :, 0].tolist())
    assert drawn <= nucleus and len(drawn) == size
    expected = torch.log(probs_V / probs_V[order_V[:size]].sum())[batch.tokens_PKN[0, :, 0]]
    torch.testing.assert_close(batch.logprobs_sampling_PKN[0, :, 0], expected, atol=1e-5, rtol=0)


def test_nucleus_and_top_k_on_a_known_distribution() -> None:
    logprobs_1V = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    kept = lambda **kw: (sampling_logprobs(logprobs_1V, SamplingParams(**kw)) > float("-inf"))[0].tolist()
    assert kept(top_p=0.45) == [False, True, False, False]
    assert kept(top_p=0.55) == [False, True, False, True]  # 0.3 crosses the threshold: kept
    assert kept(top_p=0.79) == [False, True, False, True]
    assert kept(top_p=0.81) == [False, True, True, True]
    assert kept(top_p=1.0) == [True, True, True, True]
    assert kept(top_k=2) == [False, True, False, True]
    torch.testing.assert_close(sampling_logprobs(logprobs_1V, SamplingParams(top_p=0.7)).exp()[0, [1, 3]],
                               torch.tensor([0.625, 0.375]))


def test_inverse_cdf_never_draws_zero_probability_tokens() -> None:
    logits_BV = torch.randn(1, 1000, generator=torch.Generator().manual_seed(0)).expand(4096, -1).clone()
    logits_BV[:, ::3] = float("-inf")
    uniforms_B = torch.linspace(0.0, 1.0 - 1e-12, 4096, dtype=torch.float64)
    tokens_B = invert_cdf(torch.softmax(logits_BV, -1), uniforms_B)
    assert (tokens_B % 3 != 0).all()
    cdf_V = torch.cumsum(torch.softmax(logits_BV[0].double(), -1), 0)  # the one-level reference
    assert torch.equal(tokens_B, torch.searchsorted(cdf_V, uniforms_B * cdf_V[-1], right=True))


# -- EOD, masking, seeds ----------------------------------------------------------------------------
def test_stops_at_eod_and_masks_what_follows(policy) -> None:
    model, ctx = policy
    free = RolloutGenerator([model], ctx, eod_id=VOCAB_SIZE - 1, vocab_size=VOCAB_SIZE)
    greedy = free.generate([PREFIXES[0]], num_samples=1, max_new_tokens=8, temperature=0.0)
    eod = int(greedy.tokens_PKN[0, 0, 2])  # make the greedy path's third token the EOD
    first = greedy.tokens_PKN[0, 0].tolist().index(eod)
    batch = RolloutGenerator([model], ctx, eod_id=eod, vocab_size=VOCAB_SIZE).generate(
        [PREFIXES[0]], num_samples=1, max_new_tokens=8, temperature=0.0)
    assert int(batch.lengths_PK[0, 0]) == first + 1
    assert batch.mask_PKN[0, 0].tolist() == [True] * (first + 1) + [False] * (7 - first)
    assert batch.tokens_PKN[0, 0, :first + 1].tolist() == greedy.tokens_PKN[0, 0, :first + 1].tolist()
    assert (batch.tokens_PKN[0, 0, first:] == eod).all()
    assert (batch.logprobs_model_PKN[0, 0, first + 1:] == 0).all()
    assert batch.logprobs_model_PKN[0, 0, first] < 0
    assert batch.continuations(eod_id=eod)[0][0].tolist() == greedy.tokens_PKN[0, 0, :first].tolist()
    assert batch.continuations()[0][0].tolist()[-1] == eod


def test_reproducible_per_seed_and_prefix_id(generator) -> None:
    kwargs = dict(num_samples=4, max_new_tokens=6)
    one = generator.generate(PREFIXES, seed=1, prefix_ids=[10, 11, 12, 13], **kwargs)
    assert torch.equal(one.tokens_PKN, generator.generate(PREFIXES, seed=1, prefix_ids=[10, 11, 12, 13],
                                                          **kwargs).tokens_PKN)
    assert not torch.equal(one.tokens_PKN, generator.generate(PREFIXES, seed=2, prefix_ids=[10, 11, 12, 13],
                                                              **kwargs).tokens_PKN)
    # Reordering the batch reorders the results: randomness follows the prefix id, not the position.
    order = [2, 0, 3, 1]
    shuffled = generator.generate([PREFIXES[i] for i in order], seed=1, prefix_ids=[10 + i for i in order], **kwargs)
    assert torch.equal(shuffled.tokens_PKN, one.tokens_PKN[order])
    assert not torch.equal(one.tokens_PKN[0, 0], one.tokens_PKN[0, 1])  # the K samples differ


def test_evaluation_samples_follow_the_prefix_not_the_batching(policy) -> None:
    """evaluate/generate.py: sample k of prefix p is the same in passes of any width, and the
    one-continuation helper returns sample 0."""
    import numpy as np

    from megatron_sip.evaluate.generate import continuations, sampled_continuations

    model, ctx = policy
    prefixes = [np.asarray(p, dtype=np.int64) for p in PREFIXES]
    kwargs = dict(eod_id=EOD_ID, vocab_size=VOCAB_SIZE, max_new_tokens=6, temperature=1.0)
    wide = sampled_continuations(model, ctx, prefixes, batch_size=4, num_samples=2, seed=5, **kwargs)
    narrow = sampled_continuations(model, ctx, prefixes, batch_size=1, num_samples=2, seed=5, **kwargs)
    assert all(len(s) == 2 for s in wide)
    assert all(np.array_equal(a, b) for w, n in zip(wide, narrow) for a, b in zip(w, n))
    assert any(not np.array_equal(w[0], w[1]) for w in wide)  # the samples of a prefix differ
    single = continuations(model, ctx, prefixes, batch_size=3, **kwargs)
    first = sampled_continuations(model, ctx, prefixes, batch_size=3, num_samples=1, **kwargs)
    assert all(np.array_equal(a, b[0]) for a, b in zip(single, first))


# -- contract with the trainer ----------------------------------------------------------------------
class _Wrapper(torch.nn.Module):
    """Stands for Megatron's DDP: the policy sits at `.module`."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module


def test_eval_mode_and_no_autograd_during_generation_then_train_mode(policy, engine) -> None:
    model, ctx = policy
    wrapped = _Wrapper(model).train()
    seen: Dict[str, set] = {"training": set(), "grad": set()}

    def record(module, args) -> None:
        seen["training"].add(module.training)
        seen["grad"].add(torch.is_grad_enabled())

    # The layers engine calls the model's modules, not GPTModel.forward: watch a module both use.
    handle = model.decoder.layers[0].mlp.register_forward_pre_hook(record)
    try:
        batch = RolloutGenerator([wrapped], ctx, eod_id=EOD_ID, vocab_size=VOCAB_SIZE, engine=engine).generate(
            PREFIXES, num_samples=2, max_new_tokens=3)
    finally:
        handle.remove()
    assert seen == {"training": {False}, "grad": {False}}
    assert wrapped.training and model.training
    assert not any(t.requires_grad for t in (batch.logprobs_model_PKN, batch.logprobs_sampling_PKN))


def test_kv_cache_is_released_and_global_rng_untouched(policy, monkeypatch) -> None:
    """Static engine: Megatron's context and its buffers are freed after each pass."""
    model, ctx = policy
    generator = RolloutGenerator([model], ctx, eod_id=EOD_ID, vocab_size=VOCAB_SIZE, engine="static")
    contexts: List[weakref.ref] = []
    buffers: List[weakref.ref] = []
    original = mcore.new_static_context

    def tracked(**kwargs):
        context = original(**kwargs)
        contexts.append(weakref.ref(context))
        return context

    def tracked_release(context) -> None:
        buffers.extend(weakref.ref(t) for pair in context.key_value_memory_dict.values() for t in pair)
        mcore_release(context)

    mcore_release = mcore.release
    monkeypatch.setattr(mcore, "new_static_context", tracked)
    monkeypatch.setattr(mcore, "release", tracked_release)
    rng_before = torch.get_rng_state()
    generator.generate(PREFIXES, num_samples=2, max_new_tokens=3)
    gc.collect()
    assert len(contexts) == 3 and buffers  # one pass per distinct length
    assert all(ref() is None for ref in contexts + buffers)
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_layer_cache_is_released_and_global_rng_untouched(policy, monkeypatch) -> None:
    """Layers engine: one pass for all lengths; its cache buffers are freed after it."""
    from megatron_sip.rollout import layer_engine

    model, ctx = policy
    generator = RolloutGenerator([model], ctx, eod_id=EOD_ID, vocab_size=VOCAB_SIZE, engine="layers")
    caches: List[weakref.ref] = []
    buffers: List[weakref.ref] = []
    original_init = layer_engine.LayerCache.__init__

    def tracked_init(self, *args, **kwargs) -> None:
        original_init(self, *args, **kwargs)
        caches.append(weakref.ref(self))
        buffers.extend(weakref.ref(t) for t in self.keys + self.values)

    monkeypatch.setattr(layer_engine.LayerCache, "__init__", tracked_init)
    rng_before = torch.get_rng_state()
    generator.generate(PREFIXES, num_samples=2, max_new_tokens=3)
    gc.collect()
    assert len(caches) == 1 and len(buffers) == 2 * len(model.decoder.layers)
    assert all(ref() is None for ref in caches + buffers)
    assert torch.equal(torch.get_rng_state(), rng_before)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prefixes=[[1] * 60], max_new_tokens=8), "sequence length"),
    (dict(prefixes=[[]]), "empty"),
    (dict(prefixes=[[VOCAB_SIZE]]), "outside"),
    (dict(prefixes=[[1]], top_p=0.0), "top_p"),
    (dict(prefixes=[[1]], temperature=-1.0), "temperature"),
    (dict(prefixes=[[1], [2]], prefix_ids=[0]), "prefix_ids"),
])
def test_invalid_arguments_are_rejected(generator, kwargs, message) -> None:
    arguments = {"num_samples": 1, "max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        generator.generate(arguments.pop("prefixes"), **arguments)


def test_without_eod_every_sample_runs_to_the_end(policy) -> None:
    model, ctx = policy
    batch = RolloutGenerator([model], ctx, eod_id=None, vocab_size=VOCAB_SIZE).generate(
        PREFIXES, num_samples=2, max_new_tokens=5, seed=4)
    assert (batch.lengths_PK == 5).all() and batch.mask_PKN.all()


def test_sequence_parallel_is_off_during_generation_and_restored() -> None:
    """GPU-only feature, checked on stand-in modules: each flag returns to its own value."""

    class Layer(torch.nn.Module):
        def __init__(self, scatter: bool) -> None:
            super().__init__()
            self.sequence_parallel, self.scatter_to_sequence_parallel = True, scatter

    model = torch.nn.Sequential(Layer(True), Layer(False))
    model.config = type("Config", (), {"sequence_parallel": True})()
    with mcore.sequence_parallel_off(model):
        assert not model.config.sequence_parallel
        assert [(m.sequence_parallel, m.scatter_to_sequence_parallel) for m in model] == [(False, False)] * 2
    assert model.config.sequence_parallel
    assert [(m.sequence_parallel, m.scatter_to_sequence_parallel) for m in model] == [(True, True), (True, False)]
