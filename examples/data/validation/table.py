#!/usr/bin/env python3
"""Print the judge validation table (markdown) from the committed summaries in results/.

    python examples/data/validation/table.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
JUDGES = {"rules": "rules (lexicon, word overlap)", "classifier": "classifier (alt-profanity-check)",
          "smollm2": "SmolLM2-135M-Instruct (direct, log-probs)"}
CRITERIA = ("safety", "quality", "factuality")
COLUMNS = ("accuracy", "label_accuracy", "first_position_rate", "order_consistency")


def cell(estimate: dict | None) -> str:
    if estimate is None:
        return "-"
    if estimate["value"] is None:
        return "n/a"
    return f"{estimate['value']:.3f} [{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]"


def main() -> None:
    print("| judge | criterion | accuracy | label accuracy | first-position rate | both orders agree |")
    print("|---|---|---|---|---|---|")
    for judge, name in JUDGES.items():
        for criterion in CRITERIA:
            path = RESULTS / f"{judge}_{criterion}.json"
            if not path.is_file():
                continue
            found = json.loads(path.read_text())["criteria"][criterion]
            print(f"| {name} | {criterion} (n={found['accuracy']['n']}) | "
                  + " | ".join(cell(found.get(column)) for column in COLUMNS) + " |")


if __name__ == "__main__":
    main()
