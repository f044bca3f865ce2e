"""The evaluation protocol end to end (PAPER.md, "Evaluation protocol"), in one process:

    held-out prefixes -> per model: load, greedy N tokens, suffix NLL -> judge every vote
    -> metrics with 95% intervals -> report.json, report.md, generations.jsonl, PNG plots

How this departs from the paper: M defaults to 1000 prefixes of `data.eval_paths` (one set; the
paper splits safe and unsafe sets and adds public benchmarks, which are not here); the judge is the
run's `judge` section with every criterion on; votes per judgment and temperature are
`eval.seeds` and `eval.judge_temperature` (the paper: 8 at 0.7). The policy runs at TP = PP = 1
in one process (the distributed checkpoint reshards); multi-rank evaluation is not supported. The
policy is released before judging, so an in-process judge gets the accelerator to itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

from megatron_sip.config import Config
from megatron_sip.errors import ConfigError, InputError
from megatron_sip.evaluate.checkpoints import ModelSource, check_model_section, resolve_checkpoint
from megatron_sip.evaluate.config import EvalConfig
from megatron_sip.evaluate.heldout import HeldOutSet
from megatron_sip.evaluate.judging import (BASELINE, CHECKPOINT, EvalJudge, JudgeVotes, evaluation_judge_config,
                                           judge_description)
from megatron_sip.evaluate.progress import ProgressFactory, no_progress
from megatron_sip.evaluate.report import build_report, generation_records, write_generations, write_report
from megatron_sip.evaluate.summary import EvalSummary, ModelResult, summarize
from megatron_sip.judges.config import JudgeConfig
from megatron_sip.logging_utils import get_logger, setup_logging
from megatron_sip.parallel import ParallelContext

_log = get_logger(__name__)


@dataclass(frozen=True)
class EvalOutcome:
    output_dir: Path
    report: Dict[str, Any]
    """What report.json holds."""


def evaluate(cfg: Config, eval_cfg: EvalConfig, *, progress: ProgressFactory = no_progress) -> EvalOutcome:
    """Evaluate eval_cfg.checkpoint (against eval_cfg.baseline when given); writes the report."""
    from megatron_sip.data.codec import load_codec
    from megatron_sip.evaluate.heldout import load_heldout
    from megatron_sip.evaluate.policy import run_models
    from megatron_sip.parallel import destroy_parallel, init_parallel

    setup_logging(cfg.run.log_level)
    _check_single_process(cfg)
    eval_cfg.require_checkpoint()
    # Built before the model loads: a judge config error fails in a blink.
    judge_cfg = evaluation_judge_config(cfg.judge, seeds=eval_cfg.seeds, temperature=eval_cfg.judge_temperature)
    _log.info("judge: %s backend, criteria %s, %d votes per judgment at temperature %s (eval.seeds and "
              "eval.judge_temperature replace judge.samples and judge.temperature; both pair orders)",
              judge_cfg.backend, "+".join(judge_cfg.criteria), judge_cfg.samples, judge_cfg.temperature)
    _check_paths(eval_cfg)
    with EvalJudge.open(judge_cfg) as judge:
        codec = load_codec(cfg.data.tokenizer, cfg.data.eod_token)
        ctx = init_parallel(cfg.model, seed=cfg.train.seed)
        try:
            sources = _sources(eval_cfg, cfg, ctx)
            heldout = load_heldout(cfg.data, codec, suffix_len=cfg.sip.suffix_len,
                                   vocab_size=cfg.model.vocab_size, num_prefixes=eval_cfg.num_prefixes)
            pairs = None
            if eval_cfg.pairs:
                from megatron_sip.evaluate.pairs import load_pairs

                pairs = load_pairs(eval_cfg.pairs, codec, max_prefix_len=cfg.data.max_prefix_len,
                                   suffix_len=cfg.sip.suffix_len)
            models = run_models(cfg, ctx, sources, heldout, codec, batch_size=eval_cfg.batch_size,
                                temperature=eval_cfg.temperature, pairs=pairs, progress=progress)
        finally:
            destroy_parallel()
        votes = judge.judge_generations(prefixes=heldout.prefix_texts, references=heldout.reference_texts,
                                        generations={m.label: m.texts for m in models},
                                        batch_size=eval_cfg.batch_size, progress=progress)
    output_dir = Path(eval_cfg.output_dir) if eval_cfg.output_dir else sources[0].default_output_dir()
    decoding = "greedy" if eval_cfg.temperature == 0 else f"sampled at temperature {eval_cfg.temperature:g}"
    protocol = {"decoding": decoding, "pairs": eval_cfg.pairs}
    report = _write_outputs(output_dir, cfg, judge_cfg, heldout, models, votes, protocol=protocol)
    return EvalOutcome(output_dir=output_dir, report=report)


def _write_outputs(output_dir: Path, cfg: Config, judge_cfg: JudgeConfig, heldout: HeldOutSet,
                   models: Sequence[ModelResult], votes: JudgeVotes, *, protocol: Dict[str, Any]) -> Dict[str, Any]:
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(votes, models)
    records = generation_records(heldout.prefix_texts, heldout.reference_texts, models, votes.pointwise, votes.pairs)
    report = build_report(summary, models, judge=judge_description(judge_cfg),
                          protocol={"num_prefixes": len(heldout), "eval_paths": list(cfg.data.eval_paths),
                                    "suffix_len": cfg.sip.suffix_len, **protocol},
                          plots=_plots(summary, models, output_dir), num_calls=votes.num_calls,
                          num_failed_calls=votes.num_failed_calls)
    write_generations(output_dir / "generations.jsonl", records)
    write_report(output_dir, report, records)
    return report


def _check_single_process(cfg: Config) -> None:
    from megatron_sip.parallel import launch_env

    if launch_env().world_size != 1:
        raise InputError("megatron-sip evaluate runs in one process: launch it without torchrun or srun tasks > 1")
    for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
        if getattr(cfg.model, name) != 1:
            raise ConfigError(f"model.{name}", "evaluate runs at TP = PP = 1 (checkpoints reshard); set it to 1")


def _check_paths(eval_cfg: EvalConfig) -> None:
    """Before anything loads: every named checkpoint path exists."""
    for label, spec in ((CHECKPOINT, eval_cfg.checkpoint), (BASELINE, eval_cfg.baseline)):
        if spec and not Path(spec).expanduser().is_dir():
            raise InputError(f"--{label} {spec}: no such directory")
    if eval_cfg.pairs and not Path(eval_cfg.pairs).expanduser().is_file():
        raise InputError(f"--pairs {eval_cfg.pairs}: no such file")


def _sources(eval_cfg: EvalConfig, cfg: Config, ctx: ParallelContext) -> List[ModelSource]:
    specs = [(CHECKPOINT, eval_cfg.checkpoint)]
    if eval_cfg.baseline:
        specs.append((BASELINE, eval_cfg.baseline))
    sources = [resolve_checkpoint(spec, label=label, ctx=ctx) for label, spec in specs]
    for source in sources:
        check_model_section(source, cfg.model)
    return sources


def _plots(summary: EvalSummary, models: Sequence[ModelResult], output_dir: Path) -> List[str]:
    """Write the PNGs; their file names (none when matplotlib is missing)."""
    try:
        from megatron_sip.evaluate import plots
    except ImportError as exc:
        _log.warning("no plots: %s (pip install matplotlib)", exc)
        return []
    from megatron_sip.train.metrics import latest_per_step, read_metrics

    written = []
    runs = {m.label: latest_per_step(read_metrics(m.source.metrics_file)) for m in models if m.source.metrics_file}
    if runs and plots.plot_training_curves(runs, output_dir / plots.CURVES_FILE):
        written.append(plots.CURVES_FILE)
    plots.plot_eval_metrics(summary, output_dir / plots.METRICS_FILE)
    return written + [plots.METRICS_FILE]
