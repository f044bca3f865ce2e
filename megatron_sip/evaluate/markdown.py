"""report.md: the numbers of report.json as tables a person reads, rendered from that dict so the
two never disagree."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

from megatron_sip.evaluate.stats import excludes_zero

_EXAMPLE_CHARS = 300
_NUM_EXAMPLES = 3


def render_markdown(report: Mapping[str, Any], examples: Sequence[Mapping[str, Any]]) -> str:
    lines: List[str] = ["# Evaluation report", ""]
    lines += _models(report)
    lines += _win_rate(report)
    lines += _per_model(report)
    lines += _differences(report)
    lines += _preference(report)
    lines += _judge(report)
    lines += _plots(report["plots"])
    lines += _examples(examples, list(report["models"]))
    return "\n".join(lines)


def _models(report: Mapping[str, Any]) -> List[str]:
    protocol = report["protocol"]
    decoding = protocol.get("decoding", "greedy")
    lines = [f"Continuations ({decoding}) of {protocol['suffix_len']} tokens on {protocol['num_prefixes']} held-out "
             f"prefixes ({', '.join(map(str, protocol['eval_paths']))}).", "",
             "| model | step | checkpoint |", "|---|---|---|"]
    lines += [f"| {label} | {m['step']} | `{m['checkpoint_dir']}` |" for label, m in report["models"].items()]
    return lines + [""]


def _win_rate(report: Mapping[str, Any]) -> List[str]:
    lines = ["## Quality: checkpoint vs baseline", ""]
    win = report["win_rate"]
    if win is None:
        return lines + ["No baseline given (`--baseline`): no pairwise comparison.", ""]
    lines += ["| win rate [95% CI] | prefixes | failed |", "|---|---|---|",
              f"| {format_estimate(win)} | {win['n']} | {win['num_failed']} |", "",
              "Both orders of every pair are judged and weighted equally; ties count half; 0.5 = no difference."]
    if report["identical_generations"] is not None:
        lines.append(f"The two models wrote the same text on {report['identical_generations']:.0%} of the prefixes.")
    return lines + [""]


def _per_model(report: Mapping[str, Any]) -> List[str]:
    intervals = report["intervals"]
    lines = ["## Per model", "", "| model | safe share [95% CI] | factuality [95% CI] | suffix NLL/token [95% CI] "
             "| generated tokens |", "|---|---|---|---|---|"]
    for label, model in report["models"].items():
        tokens = model["mean_generated_tokens"]
        lines.append(f"| {label} | {format_estimate(intervals['safety'][label])} | "
                     f"{format_estimate(intervals['factuality'][label])} | "
                     f"{format_estimate(intervals['nll'][label])} | {'-' if tokens is None else f'{tokens:.1f}'} |")
    reference = report["reference"]
    lines.append(f"| original suffix | {format_estimate(reference['safety'])} | "
                 f"{format_estimate(reference['factuality'])} | - | {report['protocol']['suffix_len']} |")
    return lines + ["", "Safety: majority of the votes per generation. Factuality: mean vote against the "
                    "original suffix (none / possible / definite hallucination = 1 / 0.5 / 0). The original "
                    "suffix row is the judge's sanity anchor (its factuality against itself should be near 1).", ""]


def _differences(report: Mapping[str, Any]) -> List[str]:
    differences = report.get("differences") or {}
    if not differences:
        return []
    names = {"safety": "safe share", "nll": "suffix NLL per token"}
    lines = ["## Checkpoint minus baseline, paired per prefix", "",
             "| metric | difference [95% CI] | prefixes | interval excludes 0 |", "|---|---|---|---|"]
    for name, d in differences.items():
        lines.append(f"| {names.get(name, name)} | {format_estimate(d, signed=True)} "
                     f"| {d['num_prefixes']} | {'yes' if excludes_zero(d) else 'no'} |")
    return lines + ["", "Bootstrap over prefixes (both models continue the same prefixes with the same random "
                    "numbers); a difference whose interval holds 0 is not one this evaluation can claim.", ""]


def _preference(report: Mapping[str, Any]) -> List[str]:
    preference = report.get("preference")
    if not preference:
        return []
    lines = [f"## Preference pairs ({report['protocol'].get('pairs')})", "",
             "| model | chosen more likely [95% CI] | mean log-prob margin per token |", "|---|---|---|"]
    lines += [f"| {label} | {format_estimate(e)} | {e['mean_margin']:+.3f} |" for label, e in preference.items()]
    return lines + ["", "Share of pairs where the model gives the chosen continuation the higher mean log-probability "
                    "per token (ties count half).", ""]


def _judge(report: Mapping[str, Any]) -> List[str]:
    judge = report["judge"]
    temperature = "-" if judge["temperature"] is None else judge["temperature"]
    lines = ["## Judge", "", f"Backend `{judge['backend']}` ({judge['model']}), {judge['samples']} vote(s) per "
             f"judgment at temperature {temperature}, decision {judge.get('decision', 'reasoned')}, "
             f"{judge['num_calls']} judgments "
             f"({judge['num_failed_calls']} without a valid vote).", "", f"**How valid:** {judge['validity']}", ""]
    if judge["first_position_rate"] is not None:
        lines += [f"- votes for the position shown first: {judge['first_position_rate']:.1%} (0.5 = unbiased)",
                  f"- prefixes where both orders agree: {_percent(judge['order_consistency'])}", ""]
    return lines


def _plots(names: Sequence[str]) -> List[str]:
    if not names:
        return []
    return ["## Plots", ""] + [f"![{name}]({name})" for name in names] + [""]


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def _examples(examples: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> List[str]:
    lines = ["## Examples", "", "All generations and votes: `generations.jsonl`.", ""]
    for record in examples[:_NUM_EXAMPLES]:
        lines += [f"**Prefix {record['index']}** ...{_quote(record['prefix'][-_EXAMPLE_CHARS:])}", "",
                  f"- original: {_quote(record['reference'])}"]
        lines += [f"- {label}: {_quote(record[label])}" for label in labels]
        lines.append("")
    return lines


def _quote(text: str) -> str:
    flat = " ".join(text.split())[:_EXAMPLE_CHARS]
    return f"`{flat.replace('`', chr(39))}`" if flat else "(empty)"


def format_estimate(estimate: Optional[Mapping[str, Any]], *, digits: int = 3, signed: bool = False) -> str:
    """'0.812 [0.701, 0.889]' from an Estimate's (or Interval's) JSON, '+0.1 [...]' with `signed`;
    '-' when absent."""
    if not estimate or estimate.get("value") is None:
        return "-"
    spec = f"{'+' if signed else ''}.{digits}f"
    text = f"{estimate['value']:{spec}}"
    if estimate.get("ci_low") is not None:
        text += f" [{estimate['ci_low']:{spec}}, {estimate['ci_high']:{spec}}]"
    return text
