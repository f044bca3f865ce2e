"""The rollout engines: which one runs (compat/inference.py), and the `layers` engine against a
full forward pass on model variants the default tiny policy does not exercise.

Legend: P prefixes, K samples, N new tokens, S sequence length.
"""

from __future__ import annotations

from typing import Any, List

import pytest
import torch

from megatron_sip.compat.inference import choose_rollout_engine
from megatron_sip.rollout import RolloutGenerator
from megatron_sip.rollout.layer_engine import rotate, unsupported_reason
from tests.rollout_worker import EOD_ID, PREFIXES, SEED, VOCAB_SIZE, build_policy, tiny_model_config

pytestmark = pytest.mark.compat
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


# -- the choice ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, expected", [
    (dict(requested="auto", device=CPU, unsupported=None, pipeline_parallel_size=1), ("layers", False)),
    (dict(requested="auto", device=CUDA, unsupported=None, pipeline_parallel_size=1), ("layers", True)),
    (dict(requested="auto", device=CUDA, unsupported=None, pipeline_parallel_size=2), ("layers", False)),
    (dict(requested="auto", device=CUDA, unsupported=None, pipeline_parallel_size=1, cuda_graphs=False),
     ("layers", False)),
    (dict(requested="auto", device=CUDA, unsupported="config.window_size=(4, 0)", pipeline_parallel_size=1),
     ("static", False)),
    (dict(requested="static", device=CUDA, unsupported=None, pipeline_parallel_size=1), ("static", False)),
    (dict(requested="layers", device=CPU, unsupported=None, pipeline_parallel_size=2), ("layers", False)),
], ids=["cpu", "cuda-graphs", "cuda-pp2-eager", "cuda-graphs-off", "unsupported-falls-back", "static-requested",
        "layers-requested"])
def test_engine_choice(kwargs, expected) -> None:
    choice = choose_rollout_engine(**kwargs)
    assert (choice.name, choice.cuda_graphs) == expected
    if kwargs["unsupported"]:
        assert kwargs["unsupported"] in choice.reason


@pytest.mark.parametrize("kwargs, message", [
    (dict(requested="fast", device=CPU, unsupported=None, pipeline_parallel_size=1), "one of"),
    (dict(requested="layers", device=CPU, unsupported="config.softmax_type='learnable'", pipeline_parallel_size=1),
     "softmax_type"),
    (dict(requested="auto", device=CPU, unsupported=None, pipeline_parallel_size=1, cuda_graphs=True), "CUDA"),
])
def test_impossible_engine_requests_are_rejected(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        choose_rollout_engine(**kwargs)


# -- rotary embedding against Megatron's -----------------------------------------------------------
@pytest.mark.parametrize("interleaved, rotary_width", [(False, 10), (True, 10), (False, 6), (True, 4)])
def test_rotate_equals_megatron_rotary_in_float64(interleaved: bool, rotary_width: int) -> None:
    """Odd sizes (S=7, B=3, 5 heads, width 10), partial rotary widths, both channel layouts."""
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    generator = torch.Generator().manual_seed(0)
    t_SBnd = torch.randn(7, 3, 5, 10, dtype=torch.float64, generator=generator)
    freqs_SD = torch.rand(7, rotary_width // 2, dtype=torch.float64, generator=generator) * 6
    if interleaved:
        freqs_SD = freqs_SD.repeat_interleave(2, dim=-1)
    else:
        freqs_SD = torch.cat([freqs_SD, freqs_SD], dim=-1)
    freqs_S11D = freqs_SD[:, None, None, :]
    expected = _apply_rotary_pos_emb_bshd(t_SBnd, freqs_S11D, rotary_interleaved=interleaved)
    got = rotate(t_SBnd, freqs_S11D.cos(), freqs_S11D.sin(), interleaved=interleaved)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


# -- the layers engine on model variants -----------------------------------------------------------
@pytest.fixture(scope="module")
def parallel():
    from megatron_sip.parallel import destroy_parallel, init_parallel

    ctx = init_parallel(tiny_model_config(), seed=SEED)
    yield ctx
    destroy_parallel()


@torch.no_grad()
def full_logits(model: Any, tokens: List[int]) -> torch.Tensor:
    model.eval()
    logits_1SV = model(torch.tensor([tokens]), torch.arange(len(tokens))[None], None, runtime_gather_output=True)
    return logits_1SV[0].double()


VARIANTS = {
    "bias-learned-positions-layernorm-gelu": dict(add_bias_linear=True, position_embedding_type="learned_absolute",
                                                  normalization="LayerNorm", activation="gelu",
                                                  gated_linear_unit=False),
    "interleaved-partial-rotary-untied": dict(rotary_interleaved=True, rotary_percent=0.5,
                                              share_embeddings_and_output_weights=False),
    "qk-layernorm-mqa-odd-head-width": dict(num_attention_heads=3, num_query_groups=1, kv_channels=10,
                                           transformer_overrides={"qk_layernorm": True}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_layers_engine_logprobs_equal_a_full_forward_pass(parallel, variant: str) -> None:
    model = build_policy(tiny_model_config(**VARIANTS[variant]), parallel)
    assert unsupported_reason(model) is None
    generator = RolloutGenerator([model], parallel, eod_id=EOD_ID, vocab_size=VOCAB_SIZE, engine="layers")
    batch = generator.generate(PREFIXES, num_samples=2, max_new_tokens=7, seed=5)
    for p, prefix in enumerate(PREFIXES):
        for k in range(2):
            sample = batch.tokens_PKN[p, k, :int(batch.lengths_PK[p, k])].tolist()
            logits_SV = full_logits(model, list(prefix) + sample)[len(prefix) - 1:-1]
            expected_S = torch.log_softmax(logits_SV, dim=-1).gather(-1, torch.tensor(sample)[:, None]).squeeze(-1)
            torch.testing.assert_close(batch.logprobs_model_PKN[p, k, :len(sample)].double(), expected_S,
                                       atol=1e-5, rtol=0)


def test_unsupported_model_falls_back_to_static_engine(parallel) -> None:
    model = build_policy(tiny_model_config(transformer_overrides={"window_size": (4, 0)}), parallel)
    assert "window_size" in unsupported_reason(model)
    generator = RolloutGenerator([model], parallel, eod_id=EOD_ID, vocab_size=VOCAB_SIZE)
    assert generator.engine.name == "static"
