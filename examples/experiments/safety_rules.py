"""Controlled experiment: does SIP (online DPO) lower the unsafe-continuation rate against the
`nll` baseline with the same budget, judged by the programmatic `rules` judge?

The `rules` judge is exact on the demo corpus (its unsafe documents use only the words of
examples/data/lexicon.txt), so a difference in the judged safety rate is a real difference in
what the models write. The setting is small enough for 2 CPU cores:

1. pretrain a base model with `nll` on the demo corpus (shared by every arm);
2. for each seed, continue from the base for the same number of steps with `dpo` (rules judge:
   safety + quality, K rollouts + the original suffix as candidates) and with `nll`;
3. evaluate every run on held-out prefixes with the rules judge (safety share of greedy
   continuations; win rate of SIP against the baseline of the same seed).

    python examples/experiments/safety_rules.py [--seeds 1 2 3] [--base-steps 150] [--steps 30]

Writes runs/experiments/safety_rules/summary.json and prints a table (mean and spread over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "examples" / "data" / "demo.yaml"


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "megatron_sip", *args], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)


def latest_checkpoint(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--base-steps", type=int, default=150)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--num-rollouts", type=int, default=2)
    parser.add_argument("--eval-prefixes", type=int, default=64)
    parser.add_argument("--output-dir", default="runs/experiments/safety_rules")
    args = parser.parse_args()
    out = (REPO / args.output_dir).resolve()
    data = {split: out / "data" / split for split in ("train", "heldout")}
    for split, prefix in data.items():
        if not Path(f"{prefix}.idx").is_file():
            cli("preprocess", "--input", str(REPO / "examples" / "data" / f"{split}.jsonl"), "--output-prefix", str(prefix))
    common = ["--config", str(CONFIG), f"data.paths=[{data['train']}]", f"data.eval_paths=[{data['heldout']}]",
              "judge.backend=rules", "train.global_batch_size=8", "train.micro_batch_size=4"]
    base = out / "base"
    if not (base / "checkpoints" / "latest").is_file():
        print(f"pretraining the base model ({args.base_steps} nll steps)", flush=True)
        cli("train", *common, "sip.objective=nll", f"train.steps={args.base_steps}", "train.lr_warmup_steps=10",
            f"run.output_dir={base}")
    arms = {"dpo": ["sip.objective=dpo", f"sip.num_rollouts={args.num_rollouts}", "sip.candidates=[suffix,rollouts]",
                    "judge.criteria=[safety,quality]", "sip.on_judge_failure=skip"],
            "nll": ["sip.objective=nll"]}
    results = {}
    for seed in args.seeds:
        for arm, overrides in arms.items():
            run = out / f"{arm}_seed{seed}"
            if not (run / "checkpoints" / "latest").is_file():
                print(f"seed {seed}: training {arm} for {args.steps} steps from the base", flush=True)
                cli("train", *common, *overrides, f"model.init_checkpoint={latest_checkpoint(base)}",
                    f"train.seed={seed}", f"data.seed={seed}", f"train.steps={args.steps}", "train.lr=1e-3",
                    "train.min_lr=1e-4", "train.lr_warmup_steps=2", f"run.output_dir={run}")
        report_dir = out / f"eval_seed{seed}"
        cli("evaluate", *common, "judge.criteria=[quality,safety,factuality]", "--checkpoint", str(out / f"dpo_seed{seed}"),
            "--baseline", str(out / f"nll_seed{seed}"), "--output-dir", str(report_dir),
            "--num-prefixes", str(args.eval_prefixes), "--seeds", "1", "--no-progress")
        results[seed] = json.loads((report_dir / "report.json").read_text())
    summary = {}
    for metric in ("safety", "factuality", "nll"):
        for model in ("checkpoint", "baseline"):
            values = [r[metric][model] for r in results.values() if r[metric][model] is not None]
            if values:
                summary[f"{metric}_{'sip' if model == 'checkpoint' else 'nll'}"] = (
                    statistics.mean(values), statistics.pstdev(values), values)
    wins = [r["win_rate"]["value"] for r in results.values() if r["win_rate"] and r["win_rate"]["value"] is not None]
    if wins:
        summary["win_rate_sip_vs_nll"] = (statistics.mean(wins), statistics.pstdev(wins), wins)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'metric':28}{'mean':>10}{'spread':>10}  per seed")
    for key, (mean, spread, values) in summary.items():
        print(f"{key:28}{mean:10.3f}{spread:10.3f}  {[round(v, 3) for v in values]}")


if __name__ == "__main__":
    main()
