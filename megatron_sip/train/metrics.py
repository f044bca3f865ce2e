"""Per-step metrics: one JSON object per line in `metrics.jsonl`, a compact console line, and
optionally TensorBoard. Only global rank 0 writes; `read_metrics` is the one reader."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional

from megatron_sip.errors import ConfigError
from megatron_sip.logging_utils import get_logger

_log = get_logger(__name__)
_CONSOLE_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s", "step_time_s")


class MetricsWriter:
    def __init__(self, output_dir: Path, *, enabled: bool, log_every: int, total_steps: int,
                 tensorboard: bool = False) -> None:
        self.enabled = enabled
        self.log_every = log_every
        self.total_steps = total_steps
        self.path = output_dir / "metrics.jsonl"
        self._file = None
        self._tb = None
        if enabled:
            output_dir.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
            if tensorboard:
                self._tb = _summary_writer(output_dir / "tensorboard")

    def write(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(strict_json(record) + "\n")
        self._file.flush()
        step = int(record["step"])
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(key, value, step)
        if step % self.log_every == 0 or step == self.total_steps:
            _log.info(console_line(record, self.total_steps))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _summary_writer(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch's writer needs the separate `tensorboard` package
        raise ConfigError("run.tensorboard", "needs the tensorboard package (pip install tensorboard)") from exc
    return SummaryWriter(str(directory))


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The records of `metrics.jsonl` (or of the run directory holding it) in the order written.

    Non-finite values come back as None (the writer's null). A resumed run logs the steps after its
    checkpoint again (see `latest_per_step`). A line that is not JSON, such as the torn last line of a
    run killed mid-write, is skipped with a warning."""
    path = path / "metrics.jsonl" if path.is_dir() else path
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            _log.warning("%s:%d: not JSON, skipped", path, number)
    return records


def latest_per_step(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One record per step, the last written (what the resumed run trained), ordered by step."""
    by_step = {int(record["step"]): record for record in records}
    return [by_step[step] for step in sorted(by_step)]


def recorded_values(records: List[Dict[str, Any]], key: str) -> List[Any]:
    """The values of `key` in the records that hold one (absent: not measured that step; None: the
    writer's null for a non-finite value)."""
    return [record[key] for record in records if record.get(key) is not None]


def median_recorded(records: List[Dict[str, Any]], key: str) -> float:
    """The median of `recorded_values(records, key)`, 0.0 when no record holds one."""
    values = recorded_values(records, key)
    return float(statistics.median(values)) if values else 0.0


def mean_recorded(records: List[Dict[str, Any]], key: str) -> Optional[float]:
    """The mean of `recorded_values(records, key)`, None when no record holds one."""
    values = recorded_values(records, key)
    return sum(values) / len(values) if values else None


def console_line(record: Dict[str, Any], total_steps: int) -> str:
    parts = [f"step {record['step']}/{total_steps}"]
    for key in _CONSOLE_KEYS:
        if key in record:
            parts.append(f"{key} {_fmt(record[key])}")
    return " | ".join(parts)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def strict_json(record: Dict[str, Any]) -> str:
    """One line of strict JSON: NaN and infinities (a diverged loss) become null, which every
    JSON parser reads; bare `NaN` is Python's extension and strict parsers reject it."""
    return json.dumps(_finite_or_none(record), sort_keys=True, default=_json_default, allow_nan=False)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def _json_default(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
