"""Time split of a SIP step, with and without overlapped judging.

Runs `megatron-sip train` twice on the demo corpus (tiny model, online DPO, rollouts) with the
same judge, sip.overlap_judging=false then true, and reads the per-step timings from each run's
metrics.jsonl (the first step is dropped as warm-up). The number to watch is the exposed judge
wait as a share of the step: the goal is <= 10% with overlap.

    python bench/bench_step.py                       # embedded SmolLM2 judge, in-process
    python bench/bench_step.py --judge rules         # programmatic judge (fast)
    python bench/bench_step.py --judge http://127.0.0.1:8000   # a running judge server
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPLIT = ("sample_s", "rollout_s", "judge_wait_s", "reference_s", "fwd_bwd_s", "optimizer_s", "step_s")


def judge_overrides(judge: str) -> list:
    if judge.startswith("http"):
        return ["judge.backend=openai", f"judge.endpoints=[{judge}]"]
    return [f"judge.backend={judge}"]


def run(data_prefix: str, judge: str, overlap: bool, steps: int, out: Path) -> dict:
    command = [sys.executable, "-m", "megatron_sip", "train", "--config", "examples/data/demo.yaml",
               f"data.paths=[{data_prefix}]", "sip.objective=dpo", "sip.num_rollouts=4",
               "judge.criteria=[quality,safety]", "judge.max_tokens=24", f"sip.overlap_judging={str(overlap).lower()}",
               f"train.steps={steps}", "train.lr_warmup_steps=1", f"run.output_dir={out}", *judge_overrides(judge)]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    return {key: statistics.median(r.get(f"time_{key}", 0.0) for r in records) for key in SPLIT}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", default="embedded", help="embedded, rules, or a server URL")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "train")
        subprocess.run([sys.executable, "-m", "megatron_sip", "preprocess", "--input", "examples/data/train.jsonl",
                        "--output-prefix", prefix], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        results = {overlap: run(prefix, args.judge, overlap, args.steps, Path(tmp) / f"overlap_{overlap}")
                   for overlap in (False, True)}
    print(f"SIP step time split (median over steps 2..{args.steps}, seconds), judge={args.judge}")
    print(f"{'overlap':8}" + "".join(f"{k:>14}" for k in SPLIT) + f"{'wait share':>12}")
    for overlap, split in results.items():
        share = split["judge_wait_s"] / split["step_s"]
        print(f"{str(overlap):8}" + "".join(f"{split[k]:14.3f}" for k in SPLIT) + f"{share:12.1%}")
    off, on = results[False], results[True]
    print(f"exposed_judge_wait_share overlap_off={off['judge_wait_s'] / off['step_s']:.3f} "
          f"overlap_on={on['judge_wait_s'] / on['step_s']:.3f} step_speedup={off['step_s'] / on['step_s']:.2f}x")


if __name__ == "__main__":
    main()
