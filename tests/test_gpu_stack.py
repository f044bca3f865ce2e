"""bench/gpu_stack.py's CPU path: the same two runs gpu_check.sh makes on a GPU (GPTModel step, SIP
dpo step with the rules judge and rollouts), tiny and in float32, and its summary table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch import REPO_ROOT, cli_env


@pytest.mark.slow
def test_the_cpu_path_trains_both_runs_and_prints_the_table(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "bench/gpu_stack.py", "--cpu", "--output-dir", str(tmp_path)],
                          cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| run | status | device")
    assert [row.split(" | ")[:3] for row in rows[1:]] == [["| gptmodel_fp32_nll_step", "ok", "cpu"],
                                                         ["| sip_dpo_rules_rollouts_fp32", "ok", "cpu"]]
    sip_log = (tmp_path / "runs" / "sip_dpo_rules_rollouts_fp32.log").read_text()
    assert "objective dpo" in sip_log


def test_the_gpu_runs_are_bf16_with_the_local_spec() -> None:
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        import gpu_stack
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    gpt, sip = gpu_stack.stack_runs(cpu=False, hidden_size=1024)
    for run in (gpt, sip):
        assert "model.params_dtype=bfloat16" in run.overrides and "model.transformer_impl=local" in run.overrides
    assert "sip.objective=nll" in gpt.overrides
    assert {"sip.objective=dpo", "judge.backend=rules", "sip.num_rollouts=4"} <= set(sip.overrides)
