"""Render the README's experiment tables from the committed results (examples/experiments/results/),
so that every number there can be traced to a file a reader can check.

    python examples/experiments/render_tables.py           # rewrite the tables in README.md in place
    python examples/experiments/render_tables.py --check   # exit 1 when README.md differs (tests run this)

Each table sits between two marker comments in the README; text outside them is not touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Mapping

from megatron_sip.evaluate.markdown import format_estimate
from megatron_sip.evaluate.stats import excludes_zero

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "examples" / "experiments" / "results"
README = REPO / "README.md"
ARM_NAMES = {"base": "SmolLM2-135M converted, no training", "nll": "nll (baseline)", "dpo": "SIP, online DPO",
             "rf_nll": "SIP, RF-NLL"}
COMPARISONS = (("dpo", "nll"), ("rf_nll", "nll"), ("nll", "base"), ("dpo", "base"), ("rf_nll", "base"))
"""(arm, minus): the paired differences the table shows."""


def interval(e: Mapping, *, signed: bool = False) -> str:
    text = format_estimate(e, signed=signed)
    return f"**{text}**" if signed and excludes_zero(e) else text


def _difference(block: Mapping, arm: str, minus: str) -> Mapping:
    return block[f"minus_{minus}"][arm]


def render_continued_pretraining(summary: Mapping) -> List[str]:
    s = summary["settings"]
    unsafe, nll = summary["unsafe_rate"], summary["clean_nll_per_token"]
    lexicon, classifier = unsafe["rules_unsafe"], unsafe["classifier_unsafe"]
    lines = [f"{len(s['seeds'])} seeds x {s['steps']} steps of 4 samples per arm; {s['unsafe_prefixes']} unsafe "
             f"held-out prefixes x {s['samples_per_prefix']} continuations at temperature 1 per model; "
             f"{s['clean_prefixes']} clean held-out prefixes for the NLL; {s['wall_s'] / 60:.0f} min on "
             f"{s['cpu_threads']} cores. Unsafe share of the continuations and clean NLL per token, mean over "
             "seeds and prefixes [95% bootstrap CI]:", "",
             "| model | unsafe, lexicon (training judge's criterion) | unsafe, classifier (never in training) "
             "| clean held-out NLL / token | chosen: suffix / rewrite / rollout |", "|---|---|---|---|---|"]
    for arm in summary["arms"]:
        chosen = "-"
        per_seed = summary["training"].get(arm, {})
        rates = [[r.get(f"mean_{k}_chosen_rate") for r in per_seed.values()] for k in ("suffix", "rewrite", "rollout")]
        if per_seed and all(v is not None for values in rates for v in values):
            chosen = " / ".join(f"{sum(values) / len(values):.2f}" for values in rates)
        lines.append(f"| {ARM_NAMES.get(arm, arm)} | {interval(lexicon['value'][arm])} | "
                     f"{interval(classifier['value'][arm])} | {interval(nll['value'][arm])} | {chosen} |")
    lines += ["", "Differences, paired per (seed, prefix) [95% bootstrap CI]; **bold**: the interval excludes 0:", "",
              "| difference | unsafe, lexicon | unsafe, classifier | clean NLL / token |", "|---|---|---|---|"]
    claims = []
    for arm, minus in COMPARISONS:
        if arm not in summary["arms"] or minus not in summary["arms"]:
            continue
        cells = [_difference(block, arm, minus) for block in (lexicon, classifier, nll)]
        lines.append(f"| {arm} - {minus} | " + " | ".join(interval(c, signed=True) for c in cells) + " |")
        for name, cell in zip(("unsafe by the lexicon", "unsafe by the classifier", "clean NLL"), cells):
            if excludes_zero(cell):
                claims.append(f"{arm} {'above' if cell['value'] > 0 else 'below'} {minus} on {name} "
                              f"({cell['value']:+.3f})")
    lines += ["", "Differences whose interval excludes 0: " + ("; ".join(claims) if claims else "none") + "."]
    return lines


RENDERERS: Dict[str, Callable[[Mapping], List[str]]] = {"continued_pretraining": render_continued_pretraining}


def markers(name: str) -> tuple:
    source = f"examples/experiments/results/{name}.json"
    return (f"<!-- begin {name}: rendered from {source} by examples/experiments/render_tables.py -->",
            f"<!-- end {name} -->")


def replace_block(text: str, name: str, lines: List[str]) -> str:
    begin, end = markers(name)
    if begin not in text or end not in text:
        raise SystemExit(f"README.md has no block for {name}: add the lines\n{begin}\n{end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return head + begin + "\n" + "\n".join(lines) + "\n" + end + tail


def render(readme: str, results: Path = RESULTS) -> str:
    for name, renderer in RENDERERS.items():
        path = results / f"{name}.json"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run examples/experiments/{name}.py first")
        readme = replace_block(readme, name, renderer(json.loads(path.read_text())))
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md's tables are not the rendered ones")
    args = parser.parse_args()
    current = README.read_text()
    rendered = render(current)
    if args.check:
        if rendered != current:
            print("README.md's experiment tables differ from examples/experiments/results/: run "
                  "python examples/experiments/render_tables.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
