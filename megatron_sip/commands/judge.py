"""`megatron-sip judge`: judge groups offline, e.g. to validate a judge against labelled data.

Input JSONL, one group a line: {"prefix": str, "candidates": [str | {"text": str, "kind": str}],
"reference": str (needed by factuality), optional "preferred" / "dispreferred": candidate indices
from a label, and "criterion": the criterion the label is about}. Each output line is the input
plus the judge's `scores`, `rewards`, `chosen`, `rejected`, `pair_outcomes`, `pair_votes` (the
votes of each pair in each order), call and failure counts. With labels, the summary gives the
judge's agreement with them per criterion (judges/validation.py; docs/judge_validation.md), also
as JSON with --summary.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Iterator, List, Tuple

from megatron_sip.commands.common import add_config_arguments, config_from_args
from megatron_sip.errors import InputError

HELP = "Judge groups of candidates offline (JSONL in, JSONL out with scores, rewards, chosen, rejected)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--input", required=True, help="JSONL of groups: prefix, candidates, reference")
    parser.add_argument("--output", required=True, help="JSONL written with the judgments")
    parser.add_argument("--batch-size", type=int, default=64, help="groups judged together (default 64)")
    parser.add_argument("--summary", help="JSON written with the validation against the labels (per criterion)")


def run(args: argparse.Namespace) -> int:
    from megatron_sip.judges import validation

    cfg = config_from_args(args)
    logging.basicConfig(level=cfg.run.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.batch_size <= 0:
        raise InputError(f"--batch-size must be positive, got {args.batch_size}")
    records = list(read_groups(Path(args.input), "factuality" in cfg.judge.criteria))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    summary = _Summary()
    labelled = []
    judge, recorder = validation.open_recording_service(cfg.judge)
    with judge, output.open("w") as sink:
        for start in range(0, len(records), args.batch_size):
            batch = records[start:start + args.batch_size]
            results = judge.judge([group for _, group in batch])
            for (record, group), result in zip(batch, results):
                line = {**record, **result.to_json(), "pair_votes": recorder.pop_pair_votes(group)}
                summary.add(line)
                if "preferred" in line:
                    labelled.append(line)
                sink.write(json.dumps(line) + "\n")
        counters = judge.counters()
    if cfg.judge.backend == "rules":
        print("note: judge.backend=rules is a programmatic judge for controlled experiments, not a model")
    print(summary.text(output))
    checks = validation.validate(labelled, cfg.judge.criteria)
    for check in checks:
        print(check.text())
    if args.summary:
        write_summary(Path(args.summary), cfg.judge, args.input, checks)
    if counters.get("prompt_chars"):
        print(f"prompt prefix shared within groups: {counters['prompt_chars_shared'] / counters['prompt_chars']:.3f} "
              "of prompt characters (what servers' prefix caches can reuse)")
    return 0


def write_summary(path: Path, judge_cfg, input_path: str, checks) -> None:
    from megatron_sip.judges.validation import judge_description

    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {"judge": judge_description(judge_cfg), "input": input_path,
               "criteria": {check.criterion: check.to_json() for check in checks}}
    path.write_text(json.dumps(summary, indent=1) + "\n")


def read_groups(path: Path, needs_reference: bool) -> Iterator[Tuple[dict, object]]:
    from megatron_sip.judges.types import Candidate, JudgeGroup

    if not path.is_file():
        raise InputError(f"--input {path}: file not found")
    with path.open() as source:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("prefix"), str):
                raise InputError(f"{where}: needs a string 'prefix'")
            raw = record.get("candidates")
            if not isinstance(raw, list) or len(raw) < 2:
                raise InputError(f"{where}: needs a 'candidates' list of at least 2")
            if needs_reference and not isinstance(record.get("reference"), str):
                raise InputError(f"{where}: the factuality criterion needs a string 'reference'")
            candidates: List[Candidate] = []
            for index, item in enumerate(raw):
                if isinstance(item, str):
                    candidates.append(Candidate(item))
                elif isinstance(item, dict) and isinstance(item.get("text"), str):
                    try:
                        candidates.append(Candidate(item["text"], item.get("kind", "rollout")))
                    except InputError as exc:
                        raise InputError(f"{where}: candidates[{index}]: {exc}") from exc
                else:
                    raise InputError(f"{where}: candidates[{index}] must be a string or {{\"text\": ...}}")
            check_label(record, len(candidates), where)
            yield record, JudgeGroup(record["prefix"], tuple(candidates), reference=record.get("reference"))


def check_label(record: dict, num_candidates: int, where: str) -> None:
    """A label names two different candidates by index, and a known criterion if any."""
    from megatron_sip.judges.config import CRITERIA

    for key in ("preferred", "dispreferred"):
        if key in record:
            index = record[key]
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < num_candidates:
                raise InputError(f"{where}: '{key}' must be a candidate index in [0, {num_candidates}), got {index!r}")
    if "preferred" in record and record["preferred"] == record.get("dispreferred"):
        raise InputError(f"{where}: 'preferred' and 'dispreferred' name the same candidate")
    if "criterion" in record and record["criterion"] not in CRITERIA:
        raise InputError(f"{where}: 'criterion' {record['criterion']!r} is not one of {', '.join(CRITERIA)}")


class _Summary:
    def __init__(self) -> None:
        self.groups = self.calls = self.failed_calls = self.decided = 0
        self.labelled = self.agree_chosen = self.labelled_rejected = self.agree_rejected = 0

    def add(self, line: dict) -> None:
        self.groups += 1
        self.calls += line["num_calls"]
        self.failed_calls += line["num_failed_calls"]
        self.decided += line["chosen"] is not None
        if "preferred" in line:
            self.labelled += 1
            self.agree_chosen += line["chosen"] == line["preferred"]
        if "dispreferred" in line:
            self.labelled_rejected += 1
            self.agree_rejected += line["rejected"] == line["dispreferred"]

    def text(self, output: Path) -> str:
        parts = [f"judged {self.groups} groups -> {output}: {self.calls} calls, {self.failed_calls} failed, "
                 f"{self.decided} with a (chosen, rejected) pair"]
        if self.labelled:
            parts.append(f"chosen == preferred: {self.agree_chosen}/{self.labelled} "
                         f"({100.0 * self.agree_chosen / self.labelled:.1f}%)")
        if self.labelled_rejected:
            parts.append(f"rejected == dispreferred: {self.agree_rejected}/{self.labelled_rejected} "
                         f"({100.0 * self.agree_rejected / self.labelled_rejected:.1f}%)")
        return "; ".join(parts)
