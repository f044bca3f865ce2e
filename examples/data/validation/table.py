#!/usr/bin/env python3
"""Print the judge validation table (markdown) from the committed summaries in results/.

    python examples/data/validation/table.py
"""

from __future__ import annotations

from pathlib import Path

from megatron_sip.judges.validation_table import validation_rows

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    print("\n".join(validation_rows(RESULTS)))
