"""Controlled experiment: does SIP lower the rate of unsafe continuations after unsafe prefixes,
against the `nll` baseline with the same budget? With the ablations the paper runs.

The `rules` judge and rewriter are exact on the demo corpus (its unsafe documents use only the
words of examples/data/lexicon.txt, and only from `abuse_start_char` on), so a difference in the
judged safety rate is a real difference in what the models write. Small enough for 2 CPU cores:

1. pretrain a base model with `nll` on the demo corpus (shared by every arm);
2. rewrite the suffix of every training sample the arms will see (`megatron-sip rewrite`, rules
   rewriter: the suffix with the lexicon's words taken out);
3. for each seed and arm, continue from the base for the same number of steps;
4. evaluate every arm against the `nll` arm of its seed on the *unsafe* held-out prefixes (the
   abusive part of each unsafe held-out document, two prefixes per document): safe share of the
   continuations, factuality, quality win rate, suffix NLL; and on preference pairs built from
   the same documents (`evaluate --pairs`): how often the model finds the safe version of the
   document's next 32 tokens (lexicon words taken out) more likely than the abusive original
   (`safe_preferred`), and the mean log-prob margin per token (`safe_margin`). Continuations are sampled at
   temperature 1 with the same random numbers for every model (`evaluate --temperature`): the
   tiny model's greedy text degenerates into repetition ("for for for ...") that is never
   unsafe, whatever the model learned.

Arms (`--arms`; `main` = nll dpo rf_nll, `ablations` = the rest, `all`):
  nll        plain next-token training (the baseline)
  dpo        online DPO: suffix + rewrite + 2 rollouts, judged on safety + quality (round robin)
  rf_nll     reward-filtered NLL on the best of the same candidates
  dpo_k0     dpo without rollouts (suffix vs rewrite only)
  dpo_k1     dpo with 1 rollout
  dpo_k4     dpo with 4 rollouts (round robin)
  dpo_k4_pivot, dpo_k4_knockout    dpo_k4 with the pivot / our knockout schedule
  self_sft   NLL on the policy's own rollout, no judge choice (one candidate: the verdict selects
             nothing), the paper's collapse check

    python examples/experiments/safety_rules.py [--seeds 1 2 3] [--arms main|ablations|all|NAME...]

Finished runs and evaluations are reused, so an interrupted experiment continues. Writes
runs/experiments/safety_rules/summary_<arms>.json and prints one table (mean and spread over seeds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from megatron_sip.data.demo_corpus import DEMO_SPLITS, build_demo_datasets, write_abusive_heldout
from megatron_sip.train.metrics import mean_recorded, read_metrics

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "examples" / "data" / "demo.yaml"
GLOBAL_BATCH = 8

SIP = ["sip.objective=dpo", "sip.candidates=[suffix,rewrite,rollouts]", "sip.num_rollouts=2",
       "judge.criteria=[safety,quality]", "sip.on_judge_failure=skip"]
ARMS: Dict[str, List[str]] = {
    "nll": ["sip.objective=nll"],
    "dpo": SIP,
    "rf_nll": [*SIP, "sip.objective=rf_nll"],
    "dpo_k0": [*SIP, "sip.candidates=[suffix,rewrite]"],
    "dpo_k1": [*SIP, "sip.num_rollouts=1"],
    "dpo_k4": [*SIP, "sip.num_rollouts=4"],
    "dpo_k4_pivot": [*SIP, "sip.num_rollouts=4", "judge.schedule=pivot"],
    "dpo_k4_knockout": [*SIP, "sip.num_rollouts=4", "judge.schedule=knockout"],
    "self_sft": ["sip.objective=rf_nll", "sip.candidates=[rollouts]", "sip.num_rollouts=1",
                 "judge.criteria=[safety]", "sip.on_judge_failure=skip"],
}
GROUPS = {"main": ["nll", "dpo", "rf_nll"],
          "ablations": ["nll", "dpo", "dpo_k0", "dpo_k1", "dpo_k4", "dpo_k4_pivot", "dpo_k4_knockout", "self_sft"]}
GROUPS["all"] = list(ARMS)


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "megatron_sip", *args], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)


def latest_checkpoint(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def finished(run: Path, steps: int) -> bool:
    latest = run / "checkpoints" / "latest"
    return latest.is_file() and latest.read_text().strip() == f"step_{steps:08d}"


def unsafe_heldout(out: Path) -> Path:
    return write_abusive_heldout(out / "data" / "heldout_unsafe.jsonl")


def unsafe_pairs(out: Path, suffix_len: int) -> Path:
    """Preference pairs on the unsafe held-out documents: a prefix inside the abusive part,
    rejected = the document's next `suffix_len` tokens (lexicon words in them), chosen = the same
    tokens with the lexicon's words taken out (what the rules rewriter writes)."""
    path = out / "data" / "heldout_unsafe_pairs.jsonl"
    if path.is_file():
        return path
    from megatron_sip.embedded import load_embedded_tokenizer
    from megatron_sip.judges.backends.rules import has_lexicon_term, load_lexicon
    from megatron_sip.judges.rewriter import strip_lexicon_terms

    tokenizer = load_embedded_tokenizer()
    lexicon = load_lexicon(str(REPO / "examples" / "data" / "lexicon.txt"), key="lexicon")
    rows = []
    for line in unsafe_heldout(out).read_text().splitlines():
        ids = tokenizer.encode(json.loads(line)["text"], add_special_tokens=False)
        for cut in (24, 72):  # two prefixes per document where it is long enough
            if cut + suffix_len > len(ids):
                break
            rejected = tokenizer.decode(ids[cut:cut + suffix_len])
            if has_lexicon_term(rejected, lexicon):
                rows.append({"prefix": tokenizer.decode(ids[:cut]), "rejected": rejected,
                             "chosen": strip_lexicon_terms(rejected, lexicon)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arm_names(requested: List[str]) -> List[str]:
    names: List[str] = []
    for item in requested:
        for name in GROUPS.get(item, [item]):
            if name not in ARMS:
                raise SystemExit(f"unknown arm '{name}' (arms: {', '.join(ARMS)}; groups: {', '.join(GROUPS)})")
            if name not in names:
                names.append(name)
    return ["nll", *[n for n in names if n != "nll"]]  # every arm is evaluated against nll


def training_means(run: Path) -> Dict[str, float]:
    records = read_metrics(run)
    means = {key: mean_recorded(records, key)
             for key in ("rollout_chosen_rate", "rewrite_chosen_rate", "suffix_chosen_rate", "dpo_accuracy")}
    return {key: value for key, value in means.items() if value is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--arms", nargs="+", default=["main"], help="main, ablations, all, or arm names")
    parser.add_argument("--base-steps", type=int, default=150)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-prefixes", type=int, default=120, help="at most 2 per unsafe held-out document")
    parser.add_argument("--eval-temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--output-dir", default="runs/experiments/safety_rules")
    args = parser.parse_args()
    arms = arm_names(args.arms)
    out = (REPO / args.output_dir).resolve()
    sources = {"train": DEMO_SPLITS["train"], "heldout_unsafe": unsafe_heldout(out)}
    data = build_demo_datasets(out / "data", sources)
    common = ["--config", str(CONFIG), f"data.paths=[{data['train']}]", f"data.eval_paths=[{data['heldout_unsafe']}]",
              "judge.backend=rules", "rewriter.backend=rules", f"train.global_batch_size={GLOBAL_BATCH}",
              "train.micro_batch_size=4"]
    pairs = unsafe_pairs(out, suffix_len=32)  # sip.suffix_len of examples/tiny_cpu.yaml
    started = time.perf_counter()
    base = out / "base"
    if not finished(base, args.base_steps):
        shutil.rmtree(base, ignore_errors=True)
        print(f"pretraining the base model ({args.base_steps} nll steps)", flush=True)
        cli("train", *common, "sip.objective=nll", f"train.steps={args.base_steps}", f"train.lr_warmup_steps={min(10, args.base_steps - 1)}",
            f"run.output_dir={base}")
    results: Dict[str, Dict[int, dict]] = {arm: {} for arm in arms}
    for seed in args.seeds:
        seeded = [*common, f"train.seed={seed}", f"data.seed={seed}"]
        # Rewrites of every sample this seed's arms train on (the store skips those it holds).
        cli("rewrite", *seeded, "--count", str(args.steps * GLOBAL_BATCH), "--no-progress")
        for arm in arms:
            run = out / f"{arm}_seed{seed}"
            if not finished(run, args.steps):
                shutil.rmtree(run, ignore_errors=True)  # an interrupted run starts over
                print(f"[{time.perf_counter() - started:5.0f}s] seed {seed}: training {arm} for {args.steps} steps",
                      flush=True)
                cli("train", *seeded, *ARMS[arm], f"model.init_checkpoint={latest_checkpoint(base)}",
                    f"train.steps={args.steps}", "train.lr=1e-3", "train.min_lr=1e-4", f"train.lr_warmup_steps={min(2, args.steps - 1)}",
                    f"run.output_dir={run}")
            report_dir = out / f"eval_t{args.eval_temperature:g}_pairs_{arm}_seed{seed}"
            if not (report_dir / "report.json").is_file():
                cli("evaluate", *common, "judge.criteria=[quality,safety,factuality]", "data.samples_per_doc=2",
                    "--checkpoint", str(run), "--baseline", str(out / f"nll_seed{seed}"),
                    "--output-dir", str(report_dir), "--num-prefixes", str(args.eval_prefixes), "--seeds", "1",
                    "--temperature", str(args.eval_temperature), "--pairs", str(pairs), "--no-progress")
            report = json.loads((report_dir / "report.json").read_text())
            results[arm][seed] = {"safe_preferred": report["preference"]["checkpoint"]["value"],
                                  "safe_margin": report["preference"]["checkpoint"]["mean_margin"],
                                  "safety": report["safety"]["checkpoint"],
                                  "factuality": report["factuality"]["checkpoint"],
                                  "nll": report["nll"]["checkpoint"],
                                  "win_rate_vs_nll": (report["win_rate"] or {}).get("value"),
                                  **training_means(run)}
    summary = summarize(results)
    summary_file = out / f"summary_{'-'.join(args.arms)}.json"
    summary_file.write_text(json.dumps({"seeds": args.seeds, "steps": args.steps, "eval_temperature": args.eval_temperature,
                                        "per_seed": results, "summary": summary}, indent=2))
    print_table(summary, args.seeds)
    print(f"done in {time.perf_counter() - started:.0f} s; {summary_file}")


def summarize(results: Dict[str, Dict[int, dict]]) -> Dict[str, Dict[str, List[float]]]:
    """arm -> metric -> [mean, population std, n]."""
    summary: Dict[str, Dict[str, List[float]]] = {}
    for arm, per_seed in results.items():
        metrics: Dict[str, List[float]] = {}
        for record in per_seed.values():
            for key, value in record.items():
                if value is not None:
                    metrics.setdefault(key, []).append(float(value))
        summary[arm] = {key: [statistics.mean(v), statistics.pstdev(v), len(v)] for key, v in metrics.items()}
    return summary


def print_table(summary: Dict[str, Dict[str, List[float]]], seeds: List[int]) -> None:
    columns = ("safe_preferred", "safe_margin", "safety", "factuality", "win_rate_vs_nll", "nll",
               "rollout_chosen_rate", "rewrite_chosen_rate")
    print(f"mean (population std) over seeds {seeds}; evaluation on unsafe held-out prefixes; "
          "win rate and NLL against / of each arm, the nll arm is the baseline")
    print(f"{'arm':17}" + "".join(f"{c:>22}" for c in columns))
    for arm, metrics in summary.items():
        cells = [f"{metrics[c][0]:.3f} ({metrics[c][1]:.3f})" if c in metrics else "-" for c in columns]
        print(f"{arm:17}" + "".join(f"{cell:>22}" for cell in cells))


if __name__ == "__main__":
    main()
