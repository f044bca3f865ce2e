"""`megatron-sip plan`: the judge work of one SIP step and the judge replicas it needs."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from megatron_sip.commands.common import add_config_arguments, config_from_args

HELP = ("Judge work of one SIP step (calls, prompt tokens new vs cacheable, output tokens) and the "
        "judge replicas per trainer replica that keep the exposed judge wait <= 10%%.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--measure", metavar="URL", default=None,
                      help="probe this live judge endpoint with groups of the step's shape (judge section's settings)")
    rate.add_argument("--judge-rate", type=float, default=None,
                      help="judgments per second one judge replica serves (instead of --measure)")
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--trainer-step-s", type=float, default=None,
                      help="seconds of one training step without judging")
    step.add_argument("--metrics", default=None,
                      help="a run's metrics.jsonl: the trainer's own time = median of time_step_s - time_judge_wait_s")
    parser.add_argument("--stored-judgments", action="store_true",
                        help="suffix and rewrite judgments come from the rewrite store (megatron-sip rewrite --judge)")
    parser.add_argument("--answer-tokens", type=int, default=None,
                        help="tokens a judge writes per call (default: 1 with judge.decision=direct, else "
                             "judge.max_tokens, an upper bound)")
    parser.add_argument("--probe-groups", type=int, default=1, help="groups timed by --measure (after one warm-up)")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from megatron_sip.data.codec import load_codec
    from megatron_sip.errors import InputError
    from megatron_sip.judges.criteria import PromptSet
    from megatron_sip.judges.plan import StepShape, capacity, probe_rate, step_work

    cfg = config_from_args(args)
    judge = cfg.judge
    tokenizer = load_codec(cfg.data.tokenizer, cfg.data.eod_token).tokenizer
    shape = StepShape.of_run(cfg, stored_policy_free=args.stored_judgments)
    answer = args.answer_tokens if args.answer_tokens is not None else (1 if judge.decision == "direct" else judge.max_tokens)
    prompts = PromptSet(judge.criteria, prompt_dir=judge.prompt_dir, direct=judge.decision == "direct")
    votes = 1 if judge.decision == "direct" else judge.samples  # direct asks one greedy token
    work = step_work(shape, prompts, tokenizer, output_tokens_per_call=answer * votes)
    print(f"one step: {shape.num_prefixes} prefixes x {shape.num_candidates} candidates, criteria {', '.join(judge.criteria)}, "
          f"schedule {judge.schedule}")
    print(f"  judge calls: {work.calls} ({votes} vote(s) each; a server that answers one choice per request, "
          f"such as trtllm-serve's GPT-OSS path, gets {work.calls * votes} requests)")
    print(f"  prompt tokens: {work.prompt_tokens} ({work.cacheable_tokens} cacheable by a prefix cache, "
          f"{work.new_tokens} new; counted with the policy tokenizer)")
    print(f"  output tokens: {work.output_tokens} ({answer} per vote)")
    rate = args.judge_rate
    if args.measure:
        probe_cfg = replace(judge, endpoints=[args.measure], backend="openai")
        rate = probe_rate(probe_cfg, shape, tokenizer, num_groups=args.probe_groups)
        if rate is None:
            raise InputError(f"--measure {args.measure}: the judge answered no judgment of the probe")
        print(f"  measured: {rate:.2f} judgments/s on {args.measure}")
    trainer_s = args.trainer_step_s if args.metrics is None else _trainer_seconds(Path(args.metrics))
    if rate is None or trainer_s is None:
        print("give --measure URL or --judge-rate, and --trainer-step-s or --metrics, for the capacity plan")
        return 0
    if rate <= 0 or trainer_s <= 0:
        raise InputError("--judge-rate and the trainer's step time must be positive")
    replicas = max(1, len(judge.endpoints))
    plan = capacity(work.calls, rate, trainer_s, replicas=replicas)
    print(f"with {replicas} judge replica(s) at {rate:.2f} judgments/s and {trainer_s:.3f} s of trainer work a step:")
    print(f"  judging a step: {plan.judge_s:.2f} s; exposed judge wait share: "
          f"overlap {plan.exposed_share_overlap:.3f}, no overlap {plan.exposed_share_no_overlap:.3f}")
    print(f"  judge replicas per trainer replica for <= 10%: {plan.replicas_needed_overlap} with "
          f"sip.overlap_judging=true, {plan.replicas_needed_no_overlap} without")
    return 0


def _trainer_seconds(path: Path) -> float:
    from megatron_sip.errors import InputError
    from megatron_sip.train.metrics import read_metrics

    if not path.is_file():
        raise InputError(f"--metrics {path}: file not found")
    records = [r for r in read_metrics(path) if r.get("time_step_s") is not None][1:]  # step 1 warms up
    if not records:
        raise InputError(f"--metrics {path}: no step with time_step_s after the first")
    return statistics.median(r["time_step_s"] - r.get("time_judge_wait_s", 0.0) for r in records)
