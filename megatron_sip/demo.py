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
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

from megatron_sip.errors import InputError
from megatron_sip.logging_utils import get_logger

_log = get_logger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "examples" / "data" / "demo.yaml"
_READY = re.compile(r"ready at (http://\S+)")


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


def build_datasets(out: Path) -> dict:
    prefixes = {}
    for split in ("train", "heldout"):
        prefix = out / "data" / split
        prefixes[split] = str(prefix)
        if not Path(f"{prefix}.idx").is_file():
            _run(f"preprocess {split}", _cli("preprocess", "--input", str(REPO_ROOT / "examples" / "data" / f"{split}.jsonl"),
                                             "--output-prefix", str(prefix)))
    return prefixes


@contextlib.contextmanager
def judge_server(log_path: Path, timeout_s: float) -> Iterator[str]:
    """`megatron-sip serve --model embedded` on a free port; yields its URL; always stopped."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("w")
    proc = subprocess.Popen(_cli("serve", "--model", "embedded", "--port", "0"), cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        url = _wait_ready(proc, timeout_s, log_path)
        _log.info("demo: judge server ready at %s (log: %s)", url, log_path)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        _log.info("demo: judge server stopped")


def _wait_ready(proc: subprocess.Popen, timeout_s: float, log_path: Path) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise InputError(f"the judge server exited before it was ready; see {log_path}")
        match = _READY.search(line)
        if match:
            url = match.group(1)
            if _healthy(url):
                return url
    raise InputError(f"the judge server was not ready within {timeout_s:.0f}s; see {log_path}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def run_demo(settings: DemoSettings, overrides: Optional[List[str]] = None) -> Path:
    out = settings.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = build_datasets(out)
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
