"""Judge outages during SIP training: every endpoint dies mid-run and comes back.

The judge is a real HTTP server (tests/fault_server.py) that answers every safety question with
a valid verdict; killing it with SIGKILL is the fault being injected.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.fault_server import FaultServer
from tests.launch import REPO_ROOT, cli_env, read_metrics

STEPS = 14
PER_STEP = 4


def _wait_for_steps(metrics: Path, count: int, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {count} steps within {timeout_s}s")


def test_training_survives_a_judge_outage(demo_data: dict, tmp_path: Path) -> None:
    server = FaultServer(mode="ok", reply="The text is fine.\n{decision} safe").start()
    command = [sys.executable, "-m", "megatron_sip", "train", "--config", "examples/data/demo.yaml",
               "sip.objective=dpo", f"data.paths=[{demo_data['train']}]", "sip.num_rollouts=1",
               "judge.backend=openai", f"judge.endpoints=[{server.url}]", "judge.criteria=[safety]",
               "judge.request_timeout_s=1", "judge.batch_deadline_s=2", "judge.max_retries=1",
               "judge.retry_backoff_s=0.05", "judge.circuit_failures=2", "judge.circuit_cooldown_s=0.5",
               "sip.on_judge_failure=nll_on_suffix", f"train.steps={STEPS}", "train.lr_warmup_steps=1",
               f"run.output_dir={tmp_path}"]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    try:
        _wait_for_steps(metrics, 3, proc)
        server.kill()
        _wait_for_steps(metrics, 7, proc)
        server.start()  # same port
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.kill()
    assert proc.returncode == 0, stderr[-3000:]
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    # No sample lost or trained twice: every step consumed exactly one global batch.
    assert [r["consumed_samples"] for r in records] == [PER_STEP * s for s in range(1, STEPS + 1)]
    failed = [r["step"] for r in records if r["groups_judge_failed"] == PER_STEP]
    judged = [r["step"] for r in records if r["groups_judge_failed"] == 0]
    assert failed, "the outage left no trace in the metrics"
    assert judged[0] < failed[0] < failed[-1] < judged[-1], (failed, judged)
    for record in records:
        if record["step"] in failed:  # outage steps train on the original suffix (NLL fallback)
            assert record["groups_fallback"] == PER_STEP and record["update_applied"]
    assert "judge outage" in stderr and "judge back" in stderr
