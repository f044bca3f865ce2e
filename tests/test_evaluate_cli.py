"""`megatron-sip evaluate` end to end: two tiny nll runs on the demo corpus, one evaluated against
the other with the rules judge on 8 held-out prefixes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tests.launch import REPO_ROOT, cli_env, run_cli

NUM_PREFIXES = 8
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train_args(demo_data: dict, out: Path, seed: int) -> List[str]:
    return ["train", "--config", "examples/data/demo.yaml", "sip.objective=nll", "train.steps=2",
            "train.lr_warmup_steps=1", f"train.seed={seed}", f"data.paths=[{demo_data['train']}]",
            f"data.eval_paths=[{demo_data['heldout']}]", f"run.output_dir={out}"]


def _train_together(*commands: List[str], timeout: float = 300) -> None:
    """Both runs at once: each is mostly single-threaded start-up, so two cores halve the wait."""
    procs = [subprocess.Popen([sys.executable, "-m", "megatron_sip", *args], cwd=REPO_ROOT, env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for args in commands]
    for proc, args in zip(procs, commands):
        _, stderr = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(args)} failed:\n{stderr[-4000:]}"


@pytest.fixture(scope="module")
def two_runs(demo_data: dict, tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("evaluate")
    policy, baseline = root / "policy", root / "baseline"
    _train_together(_train_args(demo_data, policy, seed=1), _train_args(demo_data, baseline, seed=7))
    return policy, baseline


@pytest.fixture(scope="module")
def greedy_eval(two_runs: tuple, demo_data: dict) -> tuple:
    policy, baseline = two_runs
    done = run_cli(["evaluate", "--config", "examples/data/demo.yaml", "judge.backend=rules",
                    f"data.eval_paths=[{demo_data['heldout']}]", "--checkpoint", str(policy),
                    "--baseline", str(baseline / "checkpoints" / "step_00000002"),
                    "--num-prefixes", str(NUM_PREFIXES), "--seeds", "2", "--no-progress"])
    return done, policy / "eval" / "step_00000002"  # the default: <run>/eval/<checkpoint name>


def test_evaluate_writes_the_report_and_plots(two_runs: tuple, greedy_eval: tuple) -> None:
    _, baseline = two_runs
    done, out = greedy_eval
    assert "win rate" in done.stdout
    report = json.loads((out / "report.json").read_text())
    for key in ("win_rate", "safety", "factuality", "nll", "intervals", "reference", "judge", "models",
                "protocol", "plots"):
        assert key in report, key
    win = report["win_rate"]
    assert win["n"] + win["num_failed"] == NUM_PREFIXES
    assert 0.0 <= win["ci_low"] <= win["value"] <= win["ci_high"] <= 1.0
    for name in ("safety", "factuality", "nll"):
        assert set(report[name]) == {"checkpoint", "baseline"}, name
    assert 9.0 < report["nll"]["checkpoint"] < 11.5  # two steps from uniform over 49k tokens (10.8)
    assert report["judge"]["backend"] == "rules" and "Programmatic" in report["judge"]["validity"]
    assert report["models"]["baseline"]["run_dir"] == str(baseline)
    assert report["protocol"]["num_prefixes"] == NUM_PREFIXES
    assert set(report["plots"]) == {"training_curves.png", "eval_metrics.png"}
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == _PNG_MAGIC, name
    assert "How valid" in (out / "report.md").read_text()
    assert len((out / "generations.jsonl").read_text().splitlines()) == NUM_PREFIXES


def test_sampled_evaluation_gives_every_model_the_same_draws(two_runs: tuple, greedy_eval: tuple, demo_data: dict,
                                                             tmp_path: Path) -> None:
    """--temperature samples instead of decoding greedily, with random numbers fixed per prefix:
    a model evaluated against itself writes the same text, and not the greedy text."""
    policy, _ = two_runs
    run_cli(["evaluate", "--config", "examples/data/demo.yaml", "judge.backend=rules",
             f"data.eval_paths=[{demo_data['heldout']}]", "--checkpoint", str(policy), "--baseline", str(policy),
             "--num-prefixes", str(NUM_PREFIXES), "--seeds", "1", "--no-progress", "--temperature", "1.0",
             "--output-dir", str(tmp_path)])
    sampled = json.loads((tmp_path / "report.json").read_text())
    assert sampled["protocol"]["decoding"] == "sampled at temperature 1"
    assert sampled["identical_generations"] == 1.0  # same model, same draws
    texts = {}
    for name, out in (("sampled", tmp_path), ("greedy", greedy_eval[1])):
        lines = (out / "generations.jsonl").read_text().splitlines()
        texts[name] = [json.loads(line)["checkpoint"] for line in lines]
    assert sum(a != b for a, b in zip(texts["sampled"], texts["greedy"])) >= NUM_PREFIXES // 2
