"""The `data` section: Megatron's blend convention and its errors; the demo config validates."""

from __future__ import annotations

import pytest

from megatron_sip.config import load_config
from megatron_sip.data.blend import Blend, parse_blend
from megatron_sip.data.config import DataConfig
from megatron_sip.errors import ConfigError
from tests.launch import REPO_ROOT


@pytest.mark.parametrize("entries, expected", [
    ([], None),
    (["a/b"], Blend(["a/b"], None)),
    (["a", "b"], Blend(["a", "b"], None)),
    ([0.3, "a", 0.7, "b"], Blend(["a", "b"], [0.3, 0.7])),
    (["30", "a", "70", "b"], Blend(["a", "b"], [30.0, 70.0])),
    ([2, "a"], Blend(["a"], None)),  # one dataset: nothing to weigh
])
def test_blend_conventions(entries, expected) -> None:
    assert parse_blend(entries, key="data.paths") == expected


@pytest.mark.parametrize("entries, key, words", [
    ([-0.5, "a", 1.0, "b"], "data.paths[0]", "positive"),
    ([0, "a", 1.0, "b"], "data.paths[0]", "positive"),
    ([1.0, "a", "b"], "data.paths", "mix"),
    (["a", 0.5, "b", 0.5], "data.paths[0]", "not a weight"),
    ([0.5, "a", 0.5, 3], "data.paths[3]", "not a dataset path"),
    (["corpus.bin"], "data.paths[0]", "without '.bin'"),
])
def test_bad_blends_name_the_key(entries, key, words) -> None:
    with pytest.raises(ConfigError) as info:
        parse_blend(entries, key="data.paths")
    assert str(info.value).startswith(key) and words in str(info.value)


def test_data_config_validates_blends_and_workers() -> None:
    with pytest.raises(ConfigError, match=r"^data\.eval_paths\[0\]"):
        DataConfig(eval_paths=[-1, "a", 1, "b"])
    with pytest.raises(ConfigError, match=r"^data\.num_workers"):
        DataConfig(num_workers=-1)


def test_negative_weight_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"data\.paths\[0\].*positive"):
        load_config(REPO_ROOT / "examples/tiny_cpu.yaml", ["data.paths=[-1,a,2,b]"])


def test_demo_config_loads() -> None:
    cfg = load_config(REPO_ROOT / "examples/data/demo.yaml")
    assert cfg.data.paths == ["examples/data/build/train"]
    assert cfg.data.eval_paths == ["examples/data/build/heldout"]
    assert cfg.model.num_layers == 2  # inherited from tiny_cpu.yaml
    assert cfg.judge.lexicon == cfg.rewriter.lexicon == "examples/data/lexicon.txt"
