"""PNG plots: each run's training curves from its metrics.jsonl, and the evaluation metrics as bars
with their 95% intervals. matplotlib's object API only (no pyplot state, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from matplotlib.figure import Figure

from megatron_sip.evaluate.metrics import Estimate
from megatron_sip.evaluate.summary import EvalSummary

CURVES_FILE, METRICS_FILE = "training_curves.png", "eval_metrics.png"
CURVE_PANELS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("loss", ("loss",)),
    ("mean reward per candidate type", ("reward_mean_suffix", "reward_mean_rewrite", "reward_mean_rollout")),
    ("chosen rate per candidate type", ("suffix_chosen_rate", "rewrite_chosen_rate", "rollout_chosen_rate")),
    ("DPO accuracy", ("dpo_accuracy",)),
)
"""(panel title, metrics.jsonl keys drawn in it); panels without any present key are left out. A
key's color is its position in its panel (suffix, rewrite, rollout), the run's is its line style."""
_RUN_STYLES = ("-", "--", ":")
_REFERENCE_COLOR, _PANEL_SIZE_IN = "0.6", 3.6


def plot_training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> bool:
    """One panel per CURVE_PANELS entry present in any run; False (nothing written) when none is."""
    present = {k for records in runs.values() for r in records for k in r}
    panels = [(title, keys) for title, keys in CURVE_PANELS if present.intersection(keys)]
    if not panels:
        return False
    fig = Figure(figsize=(_PANEL_SIZE_IN * len(panels), _PANEL_SIZE_IN), layout="constrained")
    for ax, (title, keys) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for style, (label, records) in zip(_RUN_STYLES, runs.items()):
            for color, key in enumerate(keys):
                points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, values, style, color=f"C{color}", marker=".",
                            label=f"{label}: {key}" if len(keys) > 1 else label)
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize="x-small")
    fig.savefig(path, dpi=100)
    return True


def plot_eval_metrics(summary: EvalSummary, path: Path) -> None:
    """Bars with 95% intervals: win rate (if any), safe share, factuality, suffix NLL."""
    panels: List[Tuple[str, Dict[str, Estimate], Optional[float]]] = []
    if summary.win_rate is not None:
        panels.append(("quality win rate vs baseline", {"checkpoint": summary.win_rate}, 0.5))
    panels.append(("safe share", {**summary.safety, "original": summary.reference["safety"]}, None))
    panels.append(("factuality", {**summary.factuality, "original": summary.reference["factuality"]}, None))
    panels.append(("suffix NLL / token", dict(summary.nll), None))
    fig = Figure(figsize=(_PANEL_SIZE_IN * len(panels), _PANEL_SIZE_IN), layout="constrained")
    for ax, (title, estimates, chance) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _bars(ax, estimates)
        if chance is not None:
            ax.axhline(chance, color=_REFERENCE_COLOR, linestyle="--", linewidth=1)
        if title != "suffix NLL / token":
            ax.set_ylim(0.0, 1.15)
        ax.set_title(title)
    fig.savefig(path, dpi=100)


def _bars(ax: Any, estimates: Mapping[str, Estimate]) -> None:
    names = list(estimates)
    values = [e.value if e.value is not None else 0.0 for e in estimates.values()]
    below = [v - e.ci_low if e.ci_low is not None else 0.0 for v, e in zip(values, estimates.values())]
    above = [e.ci_high - v if e.ci_high is not None else 0.0 for v, e in zip(values, estimates.values())]
    colors = [_REFERENCE_COLOR if n == "original" else f"C{i}" for i, n in enumerate(names)]
    ax.bar(names, values, yerr=[below, above], capsize=4, color=colors)
    for x, (v, top, e) in enumerate(zip(values, above, estimates.values())):
        ax.annotate("n/a" if e.value is None else f"{v:.2f}", (x, v + top), ha="center", va="bottom", fontsize="small",
                    xytext=(0, 2), textcoords="offset points")
