"""report.json (the numbers), report.md (the same numbers as tables, with how far to trust the
judge) and generations.jsonl (every prefix, reference, generation and vote).

report.json, schema_version 1:
    win_rate      {value, ci_low, ci_high, n, num_failed} or null (no baseline)
    safety        {model: share judged safe}          model = checkpoint, baseline
    factuality    {model: mean factuality score}
    nll           {model: mean NLL per suffix token}
    intervals     {safety|factuality|nll: {model: {value, ci_low, ci_high, n, num_failed}}}
    reference     {safety|factuality: {value, ci_low, ci_high, n, num_failed}} of the original suffixes
    judge         {backend, model, samples, temperature, orders, validity, first_position_rate,
                   order_consistency, num_calls, num_failed_calls}
    models        {model: {checkpoint_dir, run_dir, step, mean_generated_tokens}}
    protocol      {num_prefixes, eval_paths, suffix_len, decoding, intervals}
    identical_generations   share of prefixes where both models wrote the same text, or null
    plots         PNG file names beside the report
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from megatron_sip.evaluate.markdown import render_markdown
from megatron_sip.evaluate.metrics import PairVotes
from megatron_sip.evaluate.summary import EvalSummary, ModelResult

SCHEMA_VERSION = 1
INTERVALS = ("95% Wilson score intervals over items (prefixes or generations) for the win rate, safety "
             "and factuality, conservative for fractional per-item outcomes; normal interval over "
             "prefixes for the NLL")
_POSITION_BIAS_WARNING = 0.8
"""Share of votes for one position above which the report warns that the win rate is mostly forced."""
_FAILURE_WARNING = 0.1
"""Share of judgments without a valid vote above which the report warns."""
_VALIDITY = {
    "rules": "Programmatic judge, not a model: safety = no lexicon term, factuality = share of content "
             "words found in the prefix or the reference, quality = that support times (1 - trigram "
             "repetition). Exact for the demo corpus's safety labels by construction, a crude proxy "
             "for quality, and a policy can learn to game it. Use it for controlled experiments only.",
    "embedded": "Small in-process instruct model. DESIGN.md measured SmolLM2-135M-Instruct as no judge: "
                "it answered '1' to every pairwise question (100% position bias) and, with both "
                "orders, ranked true continuations at chance. Read its win rate with the position "
                "bias and order consistency below; make claims with a large judge (openai backend).",
    "openai": "A model served over HTTP: as valid as that model. Check the position bias and order "
              "consistency below, and its agreement with labelled pairs (`megatron-sip judge`), before "
              "trusting small differences.",
}


def validity_note(backend: str, summary: EvalSummary, *, failed_share: float = 0.0) -> str:
    """The backend's note, plus warnings from this evaluation's diagnostics."""
    note = _VALIDITY[backend]
    if failed_share > _FAILURE_WARNING:
        note += (f" {failed_share:.0%} of the judgments had no valid vote (answers outside the expected "
                 "format, or past the deadline): the metrics rest on the rest.")
    bias = summary.first_position_rate
    if bias is not None and max(bias, 1.0 - bias) >= _POSITION_BIAS_WARNING:
        note += (f" Here {bias:.0%} of the pairwise votes went to the first position: the win rate is "
                 "mostly the 0.5 that asking both orders forces, not a measurement.")
    return note


def build_report(summary: EvalSummary, models: Sequence[ModelResult], *, judge: Mapping[str, Any],
                 protocol: Mapping[str, Any], plots: Sequence[str], num_calls: int,
                 num_failed_calls: int) -> Dict[str, Any]:
    per_model = {"safety": summary.safety, "factuality": summary.factuality, "nll": summary.nll}
    return {
        "schema_version": SCHEMA_VERSION,
        "win_rate": None if summary.win_rate is None else summary.win_rate.to_json(),
        **{name: {label: e.value for label, e in values.items()} for name, values in per_model.items()},
        "intervals": {name: {label: e.to_json() for label, e in values.items()} for name, values in per_model.items()},
        "reference": {name: e.to_json() for name, e in summary.reference.items()},
        "judge": {**judge, "validity": validity_note(judge["backend"], summary,
                                                                 failed_share=num_failed_calls / max(1, num_calls)),
                  "first_position_rate": summary.first_position_rate,
                  "order_consistency": summary.order_consistency,
                  "num_calls": num_calls, "num_failed_calls": num_failed_calls},
        "models": {m.label: {"checkpoint_dir": str(m.source.checkpoint_dir),
                             "run_dir": None if m.source.run_dir is None else str(m.source.run_dir),
                             "step": m.step,
                             "mean_generated_tokens": _mean(m.num_generated_tokens)} for m in models},
        "protocol": {**protocol, "intervals": INTERVALS},
        "identical_generations": summary.identical_generations,
        "differences": {name: dict(d) for name, d in summary.differences.items()},
        "preference": ({label: {**e.to_json(), "mean_margin": summary.preference_margin[label]}
                        for label, e in summary.preference.items()} or None),
        "plots": list(plots),
    }


def _mean(values: Sequence[int]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def write_report(output_dir: Path, report: Mapping[str, Any], examples: Sequence[Mapping[str, Any]]) -> None:
    (output_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    (output_dir / "report.md").write_text(render_markdown(report, examples))


def generation_records(prefixes: Sequence[str], references: Sequence[str], models: Sequence[ModelResult],
                       pointwise: Mapping[str, Mapping[str, Sequence[tuple]]],
                       pairs: Sequence[PairVotes]) -> List[Dict[str, Any]]:
    """One JSON record per prefix: texts, and each judgment's votes."""
    records = []
    for p, (prefix, reference) in enumerate(zip(prefixes, references)):
        record: Dict[str, Any] = {"index": p, "prefix": prefix, "reference": reference}
        for m in models:
            record[m.label] = m.texts[p]
        record["votes"] = {criterion: {label: list(v[p]) for label, v in by_label.items()}
                           for criterion, by_label in pointwise.items()}
        if pairs:
            record["votes"]["quality"] = {"checkpoint_first": list(pairs[p].checkpoint_first),
                                          "baseline_first": list(pairs[p].baseline_first)}
        records.append(record)
    return records


def write_generations(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")

