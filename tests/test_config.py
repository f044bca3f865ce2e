"""Config composition, Hydra-grammar overrides, and one-line errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_sip.config import Config, load_config, to_yaml
from megatron_sip.errors import ConfigError

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").rglob("*.yaml"))
SIP_CONFIGS = [p for p in EXAMPLES if "serve" not in p.parts and p.parent.name != "base"]


@pytest.mark.parametrize("path", SIP_CONFIGS, ids=lambda p: p.name)
def test_every_example_config_validates(path: Path) -> None:
    assert isinstance(load_config(path), Config)


def test_overrides_change_add_force_and_delete() -> None:
    cfg = load_config(None, [
        "model.hidden_size=128",
        "judge.endpoints=[http://h1:8000,http://h2:8000]",
        "+model.transformer_overrides.qk_layernorm=true",
        "++train.steps=7",
    ])
    assert cfg.model.hidden_size == 128
    assert cfg.judge.endpoints == ["http://h1:8000", "http://h2:8000"]
    assert cfg.model.transformer_overrides == {"qk_layernorm": True}
    assert cfg.train.steps == 7
    restored = load_config(None, ["model.hidden_size=128", "~model.hidden_size"])
    assert restored.model.hidden_size == Config().model.hidden_size
    dropped = load_config(None, ["+model.transformer_overrides.x=1", "~model.transformer_overrides.x"])
    assert dropped.model.transformer_overrides == {}


def test_defaults_inherit_in_order(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("model:\n  hidden_size: 96\n  num_layers: 3\ntrain:\n  steps: 3\n")
    (tmp_path / "mid.yaml").write_text("defaults: [base]\nmodel:\n  num_layers: 6\n")
    (tmp_path / "top.yaml").write_text("defaults: [mid.yaml]\ntrain:\n  steps: 9\n")
    cfg = load_config(tmp_path / "top.yaml", ["model.num_layers=12"])
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.train.steps) == (96, 12, 9)
    assert "hidden_size: 96" in to_yaml(cfg)


def _error(overrides=(), path=None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return info.value


@pytest.mark.parametrize("overrides, key, words", [
    (["model.nope=1"], "model.nope", "unknown key"),
    (["+model.nope=1"], "model.nope", "not in"),
    (["model.hidden_size=abc"], "model.hidden_size", "could not be converted"),
    (["train.steps=[1,2]"], "train.steps", "could not be converted"),
    (["model.hidden_size=130"], "model.hidden_size", "not divisible"),
    (["model.tensor_model_parallel_size=3"], "model.tensor_model_parallel_size", "does not divide"),
    (["model.num_query_groups=2", "model.tensor_model_parallel_size=4"], "model.tensor_model_parallel_size", "num_query_groups"),
    (["model.make_vocab_size_divisible_by=1", "model.vocab_size=49153", "model.tensor_model_parallel_size=2"],
     "model.tensor_model_parallel_size", "vocabulary"),
    (["model.num_layers=3", "model.pipeline_model_parallel_size=2"], "model.pipeline_model_parallel_size", "num_layers"),
    (["sip.objective=ppo"], "sip.objective", "not one of"),
    (["sip.candidates=[suffix,paraphrase]"], "sip.candidates", "paraphrase"),
    (["judge.criteria=[quality,style]"], "judge.criteria", "style"),
    (["judge.top_p=0"], "judge.top_p", "(0, 1]"),
    (["train.global_batch_size=5", "train.micro_batch_size=2"], "train.global_batch_size", "multiple"),
    (["train.lr=-1"], "train.lr", "positive"),
    (["train.steps=2", "train.lr_warmup_steps=2"], "train.lr_warmup_steps", "below train.steps"),
    (["data.max_prefix_len=1000"], "data.max_prefix_len", "model.seq_length"),
    (["model.sequence_parallel=true"], "model.sequence_parallel", "tensor_model_parallel_size"),
    (["+model.hidden_size=3"], "model.hidden_size", "already set"),
    (["~model.nope"], "model.nope", "no such key"),
    (["model.hidden_size"], "model.hidden_size", "Hydra override"),
])
def test_invalid_values_name_the_key(overrides, key, words) -> None:
    error = _error(overrides)
    assert str(error).startswith(key), str(error)
    assert words in str(error)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert str(missing) in str(_error(path=missing))
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    assert "invalid YAML" in str(_error(path=broken))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  hidden_sise: 64\n")
    assert str(_error(path=unknown)).startswith("model.hidden_sise")
    loop_a, loop_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    loop_a.write_text("defaults: [b]\n")
    loop_b.write_text("defaults: [a]\n")
    assert "cycle" in str(_error(path=loop_a))
