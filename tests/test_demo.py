"""`megatron-sip demo`, shortened: the whole pipeline through the real embedded judge server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.launch import run_cli


@pytest.mark.slow
def test_short_demo_writes_the_report_and_stops_its_server(tmp_path: Path) -> None:
    done = run_cli(["demo", "--output-dir", str(tmp_path), "--steps", "2", "--eval-prefixes", "2"], timeout=900)
    assert "demo finished" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    for key in ("win_rate", "safety", "factuality"):
        assert key in report
    assert set(report["safety"]) == {"checkpoint", "baseline"}
    assert (tmp_path / "report.md").is_file()
    for run in ("sip", "baseline"):
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2]
    sip_first = json.loads((tmp_path / "sip" / "metrics.jsonl").read_text().splitlines()[0])
    assert sip_first["judge_calls"] > 0  # SIP really asked the served judge
    assert "judge server stopped" in done.stderr
