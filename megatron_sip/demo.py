"""`megatron-sip demo`: the whole system on one CPU machine, in a few minutes.

1. build the demo corpus's indexed datasets (examples/data, once);
2. start the embedded judge server (`megatron-sip serve --model embedded`, real HTTP);
3. train SIP (online DPO with rollouts, judged by that server) and the `nll` baseline on the
   same data with the same budget;
4. evaluate both on held-out prefixes with the same judge (report.json, report.md, plots);
5. stop the server, also on Ctrl-C or error.

Each stage is the real command in its own process, so what the demo runs is what users run. The
embedded judge (SmolLM2-135M-Instruct) proves the pipeline, not the method: the report states how
valid its verdicts were. examples/experiments/ holds the controlled experiment with a judge that is
valid on this corpus.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

from megatron_sip.data.demo_corpus import DEMO_DATA, REPO_ROOT, build_demo_datasets
from megatron_sip.errors import InputError
from megatron_sip.logging_utils import get_logger
from megatron_sip.serve.launcher import ServeProcess

_log = get_logger(__name__)
DEMO_CONFIG = DEMO_DATA / "demo.yaml"


@dataclass(frozen=True)
class DemoSettings:
    output_dir: Path
    steps: int = 4
    """Optimizer steps of each run (SIP and the baseline get the same budget)."""
    num_rollouts: int = 2
    num_eval_prefixes: int = 4
    server_timeout_s: float = 300.0


def _cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "megatron_sip", *args]


def _run(stage: str, command: List[str]) -> None:
    _log.info("demo: %s", stage)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise InputError(f"demo stage '{stage}' failed (exit {done.returncode}): {' '.join(command)}")
    _log.info("demo: %s done in %.0f s", stage, time.perf_counter() - started)


@contextlib.contextmanager
def judge_server(log_path: Path, timeout_s: float) -> Iterator[str]:
    """`megatron-sip serve --model embedded` on a free port; yields its URL; always stopped."""
    server = ServeProcess(["--model", "embedded"], log_path=log_path, ready_timeout_s=timeout_s,
                          stop_timeout_s=30.0, cwd=REPO_ROOT)
    try:
        url = server.start()
        _log.info("demo: judge server ready at %s (log: %s)", url, log_path)
        yield url
    finally:
        server.stop()
        _log.info("demo: judge server stopped")


def run_demo(settings: DemoSettings, overrides: Optional[List[str]] = None) -> Path:
    out = settings.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    _log.info("demo: preprocess the demo corpus (once)")
    data = build_demo_datasets(out / "data")
    common = ["--config", str(DEMO_CONFIG), f"data.paths=[{data['train']}]", f"data.eval_paths=[{data['heldout']}]",
              f"train.steps={settings.steps}", "train.lr_warmup_steps=1", *(overrides or [])]
    with judge_server(out / "judge_server.log", settings.server_timeout_s) as url:
        # SmolLM2-135M rarely writes a reasoned decision line: it is asked for the label alone and
        # read from its first token's log-probs (one token per call, and every call decides).
        # Training judges safety only (one short prompt per candidate) to keep the demo short;
        # the evaluation asks every criterion.
        judge = ["judge.backend=openai", f"judge.endpoints=[{url}]", "judge.decision=direct", "judge.logprobs=true",
                 "judge.top_logprobs=20", "judge.criteria=[safety]"]
        _run("train SIP (online DPO, judged over HTTP)", _cli(
            "train", *common, *judge, "sip.objective=dpo", f"sip.num_rollouts={settings.num_rollouts}",
            "sip.candidates=[suffix,rollouts]", "sip.on_judge_failure=nll_on_suffix", f"run.output_dir={out / 'sip'}"))
        _run("train the nll baseline", _cli("train", *common, "sip.objective=nll", f"run.output_dir={out / 'baseline'}"))
        _run("evaluate SIP against the baseline", _cli(
            "evaluate", *common, *judge, "judge.criteria=[quality,safety,factuality]",
            "--checkpoint", str(out / "sip"), "--baseline", str(out / "baseline"), "--output-dir", str(out),
            "--num-prefixes", str(settings.num_eval_prefixes), "--seeds", "1"))
    return out / "report.md"
