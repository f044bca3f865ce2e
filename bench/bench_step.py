"""Time split of a SIP step, with and without overlapped judging.

Runs `megatron-sip train` twice on the demo corpus (tiny model, online DPO, rollouts) with the
same judge, sip.overlap_judging=false then true, and reads the per-step timings from each run's
metrics.jsonl (the first step is dropped as warm-up). The number to watch is the exposed judge
wait as a share of the step: the goal is <= 10% with overlap.

Judges (`--judge`):
  serve     (default) the embedded SmolLM2 behind `megatron-sip serve`, as a sidecar process on
            its own CPU cores (`--judge-cores`, the trainer gets the rest): the cluster layout,
            where judges run on their own nodes. Asked for the label alone (judge.decision=direct).
  embedded  the same model inside the trainer's process, sharing its cores.
  rules     the programmatic judge (no model: shows the trainer's own overhead).
  URL       a judge server already running.

Overlap can hide the judge only up to the trainer's own work per step: when judging one step
takes longer than training one, the difference stays exposed whatever the overlap, and the fix
is judge capacity (more endpoints), not scheduling. The last line prints both, so a miss says
which side is short.

    python bench/bench_step.py [--judge serve|embedded|rules|URL] [--steps 6] [--criteria safety] [--plan] [KEY=VALUE ...]

`--plan` (judge serve or URL) also checks `megatron-sip plan`'s model: before training it probes the
judge server with groups of the step's shape (megatron_sip/judges/plan.py), and after the runs it
prints the exposed shares the planner predicts from that probe and the trainer's own time, next to
the measured ones.

Trailing overrides change the trained model or the step, e.g. `model.hidden_size=512
model.ffn_hidden_size=1376 model.num_layers=4` for a policy whose step outweighs the judging.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Set

from megatron_sip.data.demo_corpus import DEMO_SPLITS, build_demo_datasets
from megatron_sip.serve.launcher import ServeProcess
from megatron_sip.train.metrics import median_recorded, read_metrics

REPO = Path(__file__).resolve().parents[1]
SPLIT = ("sample_s", "rollout_s", "judge_wait_s", "reference_s", "fwd_bwd_s", "optimizer_s", "step_s")
DIRECT = ["judge.decision=direct", "judge.logprobs=true", "judge.top_logprobs=20"]


def split_cores(judge_cores: int) -> "tuple[Optional[Set[int]], Optional[Set[int]]]":
    """(trainer cores, judge cores), or (None, None) when the machine cannot be split."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) <= judge_cores:
        return None, None
    return set(cores[:-judge_cores]), set(cores[-judge_cores:])


def pinned_env(cores: Optional[Set[int]]) -> Dict[str, str]:
    env = dict(os.environ)
    if cores:
        env["OMP_NUM_THREADS"] = str(len(cores))
    return env


def pin(cores: Optional[Set[int]]):
    return (lambda: os.sched_setaffinity(0, cores)) if cores else None


def judge_server(cores: Optional[Set[int]], log: Path) -> ServeProcess:
    return ServeProcess(["--model", "embedded", "--max-batch-size", "8"], log_path=log, cwd=REPO,
                        env=pinned_env(cores), preexec_fn=pin(cores))


def run(data_prefix: str, judge: List[str], overlap: bool, steps: int, out: Path, criteria: str,
        cores: Optional[Set[int]], overrides: List[str]) -> Dict[str, float]:
    command = [sys.executable, "-m", "megatron_sip", "train", "--config", "examples/data/demo.yaml",
               f"data.paths=[{data_prefix}]", "sip.objective=dpo", "sip.num_rollouts=4",
               f"judge.criteria=[{criteria}]", f"sip.overlap_judging={str(overlap).lower()}",
               f"train.steps={steps}", "train.lr_warmup_steps=1", f"run.output_dir={out}", *judge, *overrides]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, env=pinned_env(cores),
                   preexec_fn=pin(cores))
    records = read_metrics(out)[1:]
    split = {key: median_recorded(records, f"time_{key}") for key in SPLIT}
    split["judge_latency_s"] = median_recorded(records, "judge_latency_s")
    split["judge_calls"] = median_recorded(records, "judge_calls")
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", default="serve", help="serve, embedded, rules, or a server URL")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--criteria", default="safety", help="judge.criteria, comma-separated (default safety)")
    parser.add_argument("--judge-cores", type=int, default=1, help="cores of the `serve` sidecar (default 1)")
    parser.add_argument("--plan", action="store_true", help="compare megatron-sip plan's prediction (see above)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="extra overrides for both runs")
    args = parser.parse_args()
    rate = None
    trainer_cores, judge_cores = split_cores(args.judge_cores) if args.judge == "serve" else (None, None)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        prefix = build_demo_datasets(Path(tmp), {"train": DEMO_SPLITS["train"]})["train"]
        if args.judge == "serve":
            url = stack.enter_context(judge_server(judge_cores, Path(tmp) / "serve.log"))
            judge = ["judge.backend=openai", f"judge.endpoints=[{url}]", *DIRECT]
        elif args.judge == "embedded":
            judge = ["judge.backend=embedded", *DIRECT]
        elif args.judge.startswith("http"):
            judge = ["judge.backend=openai", f"judge.endpoints=[{args.judge}]"]
        else:
            judge = [f"judge.backend={args.judge}"]
        if args.plan:
            rate = probe(judge, args.criteria)
        results = {overlap: run(prefix, judge, overlap, args.steps, Path(tmp) / f"overlap_{overlap}", args.criteria,
                                trainer_cores, args.overrides)
                   for overlap in (False, True)}
    layout = (f"trainer on cores {sorted(trainer_cores)}, judge server on {sorted(judge_cores)}"
              if trainer_cores else "no core split")
    print(f"SIP step time split (median over steps 2..{args.steps}, seconds), judge={args.judge}, "
          f"criteria={args.criteria}, {layout}" + (f", {' '.join(args.overrides)}" if args.overrides else ""))
    print(f"{'overlap':8}" + "".join(f"{k:>14}" for k in SPLIT) + f"{'calls':>8}{'wait share':>12}")
    for overlap, split in results.items():
        share = split["judge_wait_s"] / split["step_s"]
        print(f"{str(overlap):8}" + "".join(f"{split[k]:14.3f}" for k in SPLIT)
              + f"{split['judge_calls']:8.0f}{share:12.1%}")
    off, on = results[False], results[True]
    judging = off["judge_wait_s"]  # without overlap the trainer waits for the whole batch of verdicts
    own_work = on["step_s"] - on["judge_wait_s"]
    print(f"exposed_judge_wait_share overlap_off={off['judge_wait_s'] / off['step_s']:.3f} "
          f"overlap_on={on['judge_wait_s'] / on['step_s']:.3f} (goal <= 0.10) step_speedup={off['step_s'] / on['step_s']:.2f}x "
          f"judging_per_step={judging:.2f}s trainer_work_per_step={own_work:.2f}s")
    if rate is not None:
        predicted = planned(args.criteria, rate, off["step_s"] - off["judge_wait_s"])
        measured = (off["judge_wait_s"] / off["step_s"], on["judge_wait_s"] / on["step_s"])
        print(f"plan: probe {rate:.2f} judgments/s; predicted exposed share overlap_off="
              f"{predicted.exposed_share_no_overlap:.3f} overlap_on={predicted.exposed_share_overlap:.3f}; "
              f"measured {measured[0]:.3f} / {measured[1]:.3f}; predicted/measured "
              f"{predicted.exposed_share_no_overlap / measured[0]:.2f} / {predicted.exposed_share_overlap / measured[1]:.2f}")


def bench_config(judge: List[str], criteria: str):
    """The runs' config (demo.yaml + the bench's overrides), for the planner."""
    from megatron_sip.config import load_config

    return load_config(REPO / "examples" / "data" / "demo.yaml",
                       ["sip.objective=dpo", "sip.num_rollouts=4", "sip.candidates=[suffix,rollouts]",
                        f"judge.criteria=[{criteria}]", *judge])


def probe(judge: List[str], criteria: str) -> Optional[float]:
    from megatron_sip.data.codec import load_codec
    from megatron_sip.judges.plan import StepShape, probe_rate

    cfg = bench_config(judge, criteria)
    tokenizer = load_codec(cfg.data.tokenizer, cfg.data.eod_token).tokenizer
    return probe_rate(cfg.judge, StepShape.of_run(cfg), tokenizer, num_groups=2)


def planned(criteria: str, rate: float, trainer_s: float):
    from megatron_sip.judges.plan import StepShape, calls_per_step, capacity

    cfg = bench_config(["judge.backend=rules"], criteria)
    return capacity(calls_per_step(StepShape.of_run(cfg)), rate, trainer_s, replicas=1)


if __name__ == "__main__":
    main()
