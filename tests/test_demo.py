"""`megatron-sip demo`, shortened: the whole pipeline through the real embedded judge server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.launch import read_metrics, run_cli


@pytest.mark.slow
def test_short_demo_writes_the_report_and_stops_its_server(tmp_path: Path) -> None:
    done = run_cli(["demo", "--output-dir", str(tmp_path), "--steps", "2", "--eval-prefixes", "2"], timeout=900)
    assert "demo finished" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    for key in ("win_rate", "safety", "factuality"):
        assert key in report
    assert set(report["safety"]) == {"checkpoint", "baseline"}
    # Asked for the label alone, the small judge decides every judgment: the numbers are filled.
    assert report["judge"]["num_failed_calls"] == 0 and report["win_rate"]["value"] is not None
    assert all(value is not None for key in ("safety", "factuality") for value in report[key].values())
    assert (tmp_path / "report.md").is_file()
    for run in ("sip", "baseline"):
        records = read_metrics(tmp_path / run)
        assert [r["step"] for r in records] == [1, 2]
    sip_first = read_metrics(tmp_path / "sip")[0]
    assert sip_first["judge_calls"] > 0 and sip_first["judge_failed_calls"] == 0  # SIP asked the served judge
    assert sip_first["groups_preference"] > 0  # ... and trained on its preferences
    assert "judge server stopped" in done.stderr
