"""Device decisions (megatron_sip/compat/device.py) reach the model's TransformerConfig."""

from __future__ import annotations

import pytest
import torch

from megatron_sip.compat.device import transformer_device_fields
from megatron_sip.model.build import transformer_config
from megatron_sip.model.config import ModelConfig

FUSIONS = ("bias_activation_fusion", "masked_softmax_fusion", "persist_layer_norm",
           "gradient_accumulation_fusion", "apply_rope_fusion")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU decisions")
def test_on_cpu_every_fusion_is_off_and_weights_start_on_the_cpu() -> None:
    fields = transformer_device_fields(activation="silu", transformer_engine=True)
    assert fields["use_cpu_initialization"] is True
    assert not any(fields[name] for name in FUSIONS)


def test_the_model_config_carries_the_device_decisions() -> None:
    model = ModelConfig(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=64, transformer_impl="local")
    tconfig = transformer_config(model)
    expected = transformer_device_fields(activation=model.activation, transformer_engine=False)
    assert {name: getattr(tconfig, name) for name in expected} == expected
