"""The judge validation table (markdown rows) from the committed summaries that
`megatron-sip judge --summary` wrote under examples/data/validation/results/: printed by
examples/data/validation/table.py and by the demo's report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional

JUDGES = {"rules": "rules (lexicon, word overlap)", "classifier": "classifier (alt-profanity-check)",
          "smollm2": "SmolLM2-135M-Instruct (direct, log-probs)"}
"""File-name prefix -> what the judge is."""
CRITERIA = ("safety", "quality", "factuality")
COLUMNS = ("accuracy", "label_accuracy", "first_position_rate", "order_consistency")
HEADER = ["| judge | criterion | accuracy | label accuracy | first-position rate | both orders agree |",
          "|---|---|---|---|---|---|"]


def cell(estimate: Optional[Mapping]) -> str:
    if estimate is None:
        return "-"
    if estimate["value"] is None:
        return "n/a"
    return f"{estimate['value']:.3f} [{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]"


def read_validation(results: Path) -> Dict[str, Dict[str, Mapping]]:
    """judge prefix -> criterion -> its measured numbers, for every summary present."""
    found: Dict[str, Dict[str, Mapping]] = {}
    for judge in JUDGES:
        for criterion in CRITERIA:
            path = Path(results) / f"{judge}_{criterion}.json"
            if path.is_file():
                found.setdefault(judge, {})[criterion] = json.loads(path.read_text())["criteria"][criterion]
    return found


def validation_rows(results: Path) -> List[str]:
    rows = list(HEADER)
    for judge, criteria in read_validation(results).items():
        for criterion, numbers in criteria.items():
            rows.append(f"| {JUDGES[judge]} | {criterion} (n={numbers['accuracy']['n']}) | "
                        + " | ".join(cell(numbers.get(column)) for column in COLUMNS) + " |")
    return rows
