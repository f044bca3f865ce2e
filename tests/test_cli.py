"""The `megatron-sip` entry point: subcommands, resolved config output, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.launch import REPO_ROOT, cli_env


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megatron_sip", *args], cwd=REPO_ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=120)


def test_config_prints_the_resolved_yaml() -> None:
    done = _cli("config", "model.num_layers=4", "judge.endpoints=[http://h1:8000,http://h2:8000]")
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert resolved["model"]["num_layers"] == 4
    assert resolved["judge"]["endpoints"] == ["http://h1:8000", "http://h2:8000"]
    assert resolved["model"]["normalization"] == "RMSNorm"  # from examples/tiny_cpu.yaml


def test_bad_override_is_one_line_naming_the_key() -> None:
    done = _cli("config", "model.num_attention_heads=5")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "model.hidden_size" in lines[0]


def test_missing_config_file_is_named() -> None:
    done = _cli("config", "--config", "does/not/exist.yaml")
    assert done.returncode == 2
    assert "exist.yaml" in done.stderr and "not found" in done.stderr


def test_help_lists_subcommands() -> None:
    done = _cli("--help")
    assert done.returncode == 0
    for name in ("config", "train"):
        assert name in done.stdout


def test_unreachable_judge_is_one_line_naming_the_endpoints() -> None:
    done = _cli("train", "sip.objective=dpo", "judge.endpoints=[http://127.0.0.1:9]", "judge.health_timeout_s=1",
                "train.steps=2", "train.lr_warmup_steps=1", "run.output_dir=/dev/null/unused")
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("megatron-sip train: error: judge.endpoints") and "127.0.0.1:9" in last
