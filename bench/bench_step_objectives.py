"""Step time of SIP's objectives against the nll baseline, side by side, with the time split.

Runs `megatron-sip train` on the demo corpus with the tiny config (examples/data/demo.yaml, which
inherits examples/tiny_cpu.yaml) for each objective: `nll`, then SIP `dpo` and `rf_nll` with the
`rules` judge (no model behind it, so judging costs ~nothing and what remains is the trainer's
own work: rollouts, reference pass, forward-backward). Same global batch for all; the objectives
alternate `--repeats` times so that load from other processes hits them alike. Per objective the
median over every run's steps 2..N (step 1 warms up).

    python bench/bench_step_objectives.py [--steps 8] [--repeats 2] [--threads 1] [KEY=VALUE ...]

Trailing overrides go to every run. One torch thread by default (OMP_NUM_THREADS=1), as in
bench_rollouts.py: on 2 shared cores, oversubscribed threads make small ops erratic.
The last line prints `dpo_vs_nll=X rf_nll_vs_nll=Y` (goal: dpo <= 3).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

from megatron_sip.data.demo_corpus import DEMO_SPLITS, build_demo_datasets
from megatron_sip.train.metrics import median_recorded, read_metrics

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = ("nll", "dpo", "rf_nll")
SPLIT = ("sample_s", "rollout_s", "judge_wait_s", "reference_s", "fwd_bwd_s", "optimizer_s")


def train_once(data_prefix: str, objective: str, steps: int, out: Path, threads: int,
               overrides: List[str]) -> List[dict]:
    command = [sys.executable, "-m", "megatron_sip", "train", "--config", "examples/data/demo.yaml",
               f"data.paths=[{data_prefix}]", f"sip.objective={objective}", "judge.backend=rules",
               f"train.steps={steps}", "train.lr_warmup_steps=1", f"run.output_dir={out}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return read_metrics(out)[1:]


def medians(records: List[dict]) -> Dict[str, float]:
    result = {"step_s": median_recorded(records, "step_time_s")}
    for key in SPLIT:
        result[key] = median_recorded(records, f"time_{key}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="extra overrides for every run")
    args = parser.parse_args()
    records: Dict[str, List[dict]] = {objective: [] for objective in OBJECTIVES}
    with tempfile.TemporaryDirectory() as tmp:
        prefix = build_demo_datasets(Path(tmp), {"train": DEMO_SPLITS["train"]})["train"]
        for repeat in range(args.repeats):
            for objective in OBJECTIVES:
                out = Path(tmp) / f"{objective}_{repeat}"
                records[objective] += train_once(prefix, objective, args.steps, out, args.threads, args.overrides)
    results = {objective: medians(values) for objective, values in records.items()}
    print(f"step time by objective (median of steps 2..{args.steps} over {args.repeats} runs each, seconds), "
          f"tiny config, rules judge, {args.threads} thread(s)" + (f", {' '.join(args.overrides)}" if args.overrides else ""))
    print(f"{'objective':10}{'step':>9}" + "".join(f"{k:>14}" for k in SPLIT) + f"{'vs nll':>9}")
    nll_step = results["nll"]["step_s"]
    for objective, split in results.items():
        print(f"{objective:10}{split['step_s']:9.3f}" + "".join(f"{split[k]:14.3f}" for k in SPLIT)
              + f"{split['step_s'] / nll_step:8.2f}x")
    print(f"dpo_vs_nll={results['dpo']['step_s'] / nll_step:.2f} rf_nll_vs_nll={results['rf_nll']['step_s'] / nll_step:.2f} "
          "(goal: dpo <= 3)")


if __name__ == "__main__":
    main()
