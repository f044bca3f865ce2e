"""NeMo / Megatron-Bridge key spellings in YAML files and overrides (megatron_sip/config_nemo.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from megatron_sip.config import load_config
from megatron_sip.config_nemo import mapping_table, translate_layer, translate_overrides
from megatron_sip.errors import ConfigError
from tests.launch import REPO_ROOT

pytestmark = pytest.mark.compat

NEMO_YAML = """
trainer:
  devices: 8
  num_nodes: 4
  max_steps: 2000
  log_every_n_steps: 10
  gradient_clip_val: 1.0
  precision: bf16-mixed
exp_manager:
  exp_dir: /results/sip
  name: sip-nemo
  checkpoint_callback_params:
    every_n_train_steps: 200
    save_top_k: 3
model:
  micro_batch_size: 2
  global_batch_size: 64
  tensor_model_parallel_size: 2
  encoder_seq_length: 2048
  max_position_embeddings: 2048
  num_layers: 4
  hidden_size: 256
  ffn_hidden_size: 688
  num_attention_heads: 8
  num_query_groups: 4
  normalization: rmsnorm
  activation: fast-swiglu
  bias: false
  rotary_percentage: 1.0
  transformer_engine: false
  seed: 7
  tokenizer:
    library: huggingface
    type: embedded
  data:
    data_prefix: [0.7, /data/a_text_document, 0.3, /data/b_text_document]
  optim:
    name: distributed_fused_adam
    lr: 3.0e-4
    weight_decay: 0.1
    betas: [0.9, 0.98]
    sched:
      name: CosineAnnealing
      warmup_steps: 100
      min_lr: 3.0e-5
"""

BRIDGE_YAML = """
model:
  num_layers: 4
  hidden_size: 256
  num_attention_heads: 8
  seq_length: 1024
  normalization: RMSNorm
  bf16: true
  fp8: hybrid
  transformer_impl: local
train:
  train_iters: 500
  micro_batch_size: 1
  global_batch_size: 32
optimizer:
  optimizer: adam
  lr: 1.0e-4
  min_lr: 1.0e-5
  adam_beta2: 0.98
  clip_grad: 0.5
scheduler:
  lr_warmup_iters: 50
  lr_decay_style: linear
checkpoint:
  save_interval: 100
  save: /results/bridge
logger:
  log_interval: 5
rng:
  seed: 11
"""


def _load_translated(tmp_path: Path, text: str, overrides=()) -> object:
    """Translate one file by hand and load it (what config_compose does with the hook)."""
    translated = translate_layer(yaml.safe_load(text), origin="test.yaml")
    path = tmp_path / "translated.yaml"
    path.write_text(yaml.safe_dump(translated))
    return load_config(path, translate_overrides(list(overrides)))


def test_nemo_yaml_translates(tmp_path: Path) -> None:
    cfg = _load_translated(tmp_path, NEMO_YAML)
    assert (cfg.train.steps, cfg.train.log_every, cfg.train.clip_grad) == (2000, 10, 1.0)
    assert (cfg.model.params_dtype, cfg.run.output_dir, cfg.run.name) == ("bfloat16", "/results/sip", "sip-nemo")
    assert (cfg.train.save_every, cfg.train.keep_last) == (200, 3)
    assert (cfg.train.micro_batch_size, cfg.train.global_batch_size, cfg.model.seq_length) == (2, 64, 2048)
    assert (cfg.model.normalization, cfg.model.activation, cfg.model.gated_linear_unit) == ("RMSNorm", "silu", True)
    assert (cfg.model.add_bias_linear, cfg.model.transformer_impl, cfg.train.seed) == (False, "local", 7)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.adam_beta1, cfg.train.adam_beta2) == (3e-4, 0.1, 0.9, 0.98)
    assert (cfg.train.lr_decay_style, cfg.train.lr_warmup_steps, cfg.train.min_lr) == ("cosine", 100, 3e-5)
    assert cfg.data.paths == [0.7, "/data/a_text_document", 0.3, "/data/b_text_document"]
    assert cfg.data.tokenizer == "embedded" and cfg.model.tensor_model_parallel_size == 2


def test_megatron_bridge_yaml_translates(tmp_path: Path) -> None:
    cfg = _load_translated(tmp_path, BRIDGE_YAML)
    assert (cfg.train.steps, cfg.train.global_batch_size) == (500, 32)
    assert (cfg.model.params_dtype, cfg.model.fp8) == ("bfloat16", "hybrid")
    assert (cfg.train.lr, cfg.train.min_lr, cfg.train.adam_beta2, cfg.train.clip_grad) == (1e-4, 1e-5, 0.98, 0.5)
    assert (cfg.train.lr_warmup_steps, cfg.train.lr_decay_style, cfg.train.save_every) == (50, "linear", 100)
    assert (cfg.run.output_dir, cfg.train.log_every, cfg.train.seed) == ("/results/bridge", 5, 11)


def test_overrides_in_their_grammar(tmp_path: Path) -> None:
    overrides = ["trainer.max_steps=10", "model.optim.betas=[0.8,0.9]", "optimizer.lr=2e-3",
                 "trainer.precision=bf16", "trainer.devices=8", "model.num_layers=3",
                 "+model.transformer_overrides.qk_layernorm=true", "~model.optim.sched.warmup_steps"]
    assert translate_overrides(overrides) == [
        "train.steps=10", "train.adam_beta1=0.8", "train.adam_beta2=0.9", "train.lr=0.002",
        "model.params_dtype='bfloat16'", "model.num_layers=3", "+model.transformer_overrides.qk_layernorm=true",
        "~train.lr_warmup_steps"]
    cfg = load_config(REPO_ROOT / "examples" / "tiny_cpu.yaml", translate_overrides(overrides))
    assert (cfg.train.steps, cfg.train.adam_beta1, cfg.train.lr, cfg.model.num_layers) == (10, 0.8, 2e-3, 3)
    assert cfg.train.lr_warmup_steps == 2 and cfg.model.params_dtype == "bfloat16"


def test_nemo_hybrid_fp8_is_two_keys() -> None:
    data = translate_layer({"model": {"fp8": True, "fp8_hybrid": True}}, origin="x")
    assert data == {"model": {"fp8": "hybrid"}}
    assert translate_layer({"model": {"fp8": True}}, origin="x") == {"model": {"fp8": "e4m3"}}


@pytest.mark.parametrize("data, key, problem", [
    ({"trainer": {"max_steps": 5}, "train": {"steps": 6}}, "trainer.max_steps", "also set to 6"),
    ({"trainer": {"max_steps": 5}, "train": {"train_iters": 6}}, "train.train_iters", "trainer.max_steps sets it to 5"),
    ({"trainer": {"fancy_option": 1}}, "trainer.fancy_option", "not in the NeMo / Megatron-Bridge key mapping"),
    ({"model": {"optim": {"eps": 1e-8}}}, "model.optim.eps", "not in the NeMo / Megatron-Bridge key mapping"),
    ({"model": {"activation": "reglu"}}, "model.activation", "no counterpart"),
    ({"optimizer": {"optimizer": "sgd"}}, "optimizer.optimizer", "only Adam"),
])
def test_problems_name_the_key(data: dict, key: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        translate_layer(data, origin="x.yaml")
    assert info.value.key == key


def test_unknown_foreign_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="not in the NeMo"):
        translate_overrides(["scheduler.magic=1"])


def test_our_own_configs_pass_through_unchanged() -> None:
    recipes = sorted((REPO_ROOT / "examples" / "recipes").rglob("*.yaml"))
    for path in [REPO_ROOT / "examples" / "tiny_cpu.yaml", *recipes]:
        data = yaml.safe_load(path.read_text())
        assert translate_layer(data, origin=str(path)) == data, path


def test_docs_list_the_whole_mapping() -> None:
    assert mapping_table() in (REPO_ROOT / "docs" / "cluster.md").read_text()


def test_load_config_accepts_nemo_spelling(tmp_path: Path) -> None:
    path = tmp_path / "nemo.yaml"
    path.write_text(NEMO_YAML)
    cfg = load_config(path, ["trainer.max_steps=700", "model.optim.lr=1e-3"])
    assert (cfg.train.steps, cfg.train.lr, cfg.model.activation) == (700, 1e-3, "silu")
