"""Judgments per second of `megatron-sip serve` with and without prompt-prefix reuse, same build,
same run, same SIP groups.

Each group is what one prefix brings in a SIP step: a 512-token document prefix (from the demo
corpus) and K=8 rollouts plus the suffix as candidates of N=128 tokens, judged for safety
(pointwise) and quality (knockout schedule, both orders), with `judge.decision=direct` (the
embedded judge's setting: one token per judgment, so the prompt is the cost). One server runs at
a time, on the same cores; the judge client is the trainer's (`JudgeService`). Prints a table and,
last, `speedup=X` (judgments/s with reuse over without). Goal: X >= 3.

    python bench/bench_serve_prefix.py [--groups 2] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_sip.embedded import load_embedded_tokenizer  # noqa: E402
from megatron_sip.judges.config import JudgeConfig  # noqa: E402
from megatron_sip.judges.service import JudgeService  # noqa: E402
from megatron_sip.judges.types import Candidate, JudgeGroup  # noqa: E402
from megatron_sip.serve.launcher import ServeProcess  # noqa: E402

PREFIX_TOKENS, SUFFIX_TOKENS, NUM_ROLLOUTS = 512, 128, 8


def warm_up_group() -> JudgeGroup:
    """A small group to load the model and warm the code paths before timing."""
    return JudgeGroup("A short start of a text", (Candidate(" that goes on.", "suffix"), Candidate(" and ends."),
                                                  Candidate(" then more.")), reference=" that goes on.")


def sip_groups(num_groups: int) -> List[JudgeGroup]:
    """Prefixes and candidates cut from the demo corpus with the policy's (SmolLM2's) tokenizer."""
    tokenizer = load_embedded_tokenizer()
    docs = [json.loads(line)["text"] for line in (REPO / "examples" / "data" / "train.jsonl").read_text().splitlines()]
    stream = tokenizer.encode(" ".join(docs[:400]), add_special_tokens=False)
    at, groups = 0, []

    def take(n: int) -> str:
        nonlocal at
        at += n
        return tokenizer.decode(stream[at - n:at])

    for _ in range(num_groups):
        prefix = take(PREFIX_TOKENS)
        candidates = [Candidate(take(SUFFIX_TOKENS), "suffix")]
        candidates += [Candidate(take(SUFFIX_TOKENS), "rollout") for _ in range(NUM_ROLLOUTS)]
        groups.append(JudgeGroup(prefix, tuple(candidates), reference=candidates[0].text))
    return groups


def measure(reuse_tokens: int, warm_up: List[JudgeGroup], groups: List[JudgeGroup], batch_size: int,
            log_dir: Path) -> Tuple[float, int, int]:
    """(seconds, judgments, failed) for judging `groups` on a fresh server."""
    args = ["--model", "embedded", "--max-batch-size", str(batch_size), "--prefix-cache-tokens", str(reuse_tokens)]
    with ServeProcess(args, log_path=log_dir / f"serve-{reuse_tokens}.log", cwd=REPO) as url:
        cfg = JudgeConfig(endpoints=[url], criteria=["quality", "safety"], schedule="knockout", decision="direct",
                          logprobs=True, top_logprobs=20, max_concurrency_per_endpoint=batch_size,
                          request_timeout_s=600, batch_deadline_s=3600, health_timeout_s=60)
        with JudgeService.open(cfg) as judge:
            judge.judge(warm_up)
            start = time.perf_counter()
            results = judge.judge(groups)
            elapsed = time.perf_counter() - start
    return elapsed, sum(r.num_calls for r in results), sum(r.num_failed_calls for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=2, help="SIP groups judged per server")
    parser.add_argument("--batch-size", type=int, default=8, help="server --max-batch-size and client concurrency")
    parser.add_argument("--reuse-tokens", type=int, default=8192, help="--prefix-cache-tokens of the reuse server")
    args = parser.parse_args()
    warm_up, groups = [warm_up_group()], sip_groups(args.groups)
    print(f"{args.groups} groups: prefix {PREFIX_TOKENS} tokens, suffix + {NUM_ROLLOUTS} rollouts of "
          f"{SUFFIX_TOKENS} tokens; safety + quality (knockout, both orders), decision=direct", flush=True)
    print(f"{'prefix reuse':<14}{'seconds':>9}{'judgments':>11}{'failed':>8}{'judgments/s':>13}", flush=True)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, tokens in (("off", 0), ("on", args.reuse_tokens)):
            elapsed, judgments, failed = measure(tokens, warm_up, groups, args.batch_size, Path(tmp))
            rates[label] = judgments / elapsed
            print(f"{label:<14}{elapsed:>9.1f}{judgments:>11}{failed:>8}{rates[label]:>13.2f}", flush=True)
    print(f"speedup={rates['on'] / rates['off']:.2f}")


if __name__ == "__main__":
    main()
