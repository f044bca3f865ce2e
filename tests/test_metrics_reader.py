"""The one `metrics.jsonl` reader (train/metrics.py): strict JSON with nulls, torn last lines,
resumed runs, and the medians the benchmarks print."""

from __future__ import annotations

import json

import pytest

from megatron_sip.train.metrics import latest_per_step, mean_recorded, median_recorded, read_metrics, recorded_values


def test_nulls_torn_lines_resumes_and_medians(tmp_path):
    lines = [{"step": 1, "loss": 2.0, "time_step_s": 9.0}, {"step": 2, "loss": None, "time_step_s": 1.0},
             {"step": 2, "loss": 1.5, "time_step_s": 3.0}, {"step": 3, "loss": 1.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 4, "lo')
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 2, 3]  # the torn last line is skipped
    assert [r["step"] for r in latest_per_step(records)] == [1, 2, 3]
    assert recorded_values(records, "loss") == [2.0, 1.5, 1.0]
    assert median_recorded(records, "time_step_s") == 3.0
    assert median_recorded(records, "absent") == 0.0
    assert mean_recorded(records, "loss") == pytest.approx(1.5)  # the null is not a value
    assert mean_recorded(records, "absent") is None
