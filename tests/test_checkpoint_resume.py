"""Checkpoints: exact resume, atomic writes, pre-emption signals, non-finite losses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launch import REPO_ROOT, cli_env, read_metrics, run_cli

NLL = ["train", "sip.objective=nll", "train.micro_batch_size=1", "train.global_batch_size=2"]


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_cli([*NLL, "train.steps=8", f"run.output_dir={whole}"])
    run_cli([*NLL, "train.steps=8", "train.exit_interval=4", f"run.output_dir={split}"])
    first = read_metrics(split)
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    assert (split / "checkpoints" / "step_00000004").is_dir()
    run_cli([*NLL, "train.steps=8", "train.exit_interval=4", f"run.output_dir={split}", "--resume"])
    resumed, reference = read_metrics(split), read_metrics(whole)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]  # bitwise on CPU
    assert [r["consumed_samples"] for r in resumed] == [r["consumed_samples"] for r in reference]
    assert not list((split / "checkpoints").glob("*.partial"))
    assert (split / "checkpoints" / "latest").read_text().strip() == "step_00000008"


@pytest.mark.slow
def test_sigterm_saves_a_loadable_checkpoint(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "megatron_sip", *NLL, "train.steps=100000", f"run.output_dir={tmp_path}"]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=cli_env(), stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGTERM received" in stderr
    steps = [r["step"] for r in read_metrics(tmp_path)]
    latest = (tmp_path / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{steps[-1]:08d}"
    # It loads: a resumed run continues from the next step.
    run_cli([*NLL, f"train.steps={steps[-1] + 1}", f"run.output_dir={tmp_path}", "--resume"])
    assert [r["step"] for r in read_metrics(tmp_path)][-1] == steps[-1] + 1


def test_nonfinite_losses_skip_updates_then_stop(tmp_path: Path) -> None:
    # An infinite learning rate makes the weights non-finite after the first update.
    command = [sys.executable, "-m", "megatron_sip", *NLL, "train.steps=10", "train.lr=1e30",
               "train.min_lr=1e30", "train.clip_grad=0", "train.max_consecutive_nonfinite=3",
               f"run.output_dir={tmp_path}"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "consecutive steps had a non-finite loss" in done.stderr
    records = _read_strict_json_lines(tmp_path / "metrics.jsonl")
    skipped = [r for r in records if not r["loss_finite"]]
    assert len(skipped) == 3 and not any(r["update_applied"] for r in skipped)
    assert all(r["loss"] is None for r in skipped)  # NaN is written as null
    assert records[-1]["nonfinite_steps"] == 3


def _read_strict_json_lines(path: Path) -> list:
    """Parse as strict JSON parsers do: NaN, Infinity and -Infinity are errors."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{path}: {constant} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]
