"""Rollouts on one rank of a TP/PP layout: the multi-rank half of tests/test_rollout_parallel.py.

    python -m torch.distributed.run --nproc-per-node=2 tests/rollout_worker.py --tp 2 --out DIR

Every rank writes what `generate` returned to DIR/rank<r>.pt. The model, prefixes and sampling
arguments are defined here once, so the test builds the identical single-rank reference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from megatron_sip.model.config import ModelConfig  # noqa: E402

SEED = 7
VOCAB_SIZE = 64
EOD_ID = 3
# Different lengths in one batch, two of them equal (one pass holds both).
PREFIXES = [[5, 9, 14, 2, 33, 60, 1], [40, 41, 42], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [11, 22, 33]]
GENERATE_KWARGS: Dict[str, Any] = dict(num_samples=3, max_new_tokens=6, temperature=0.9, top_p=0.95, top_k=40,
                                       seed=11, prefix_ids=[100, 101, 102, 103])


def tiny_model_config(**overrides: Any) -> ModelConfig:
    """2 layers, hidden 32, GQA (4 heads, 2 groups), a 64-token vocabulary without padding.
    A larger init std than Megatron's 0.02 gives peaked next-token distributions, which the
    sampling tests need."""
    fields: Dict[str, Any] = dict(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                                  num_query_groups=2, vocab_size=VOCAB_SIZE, make_vocab_size_divisible_by=64,
                                  seq_length=64, init_method_std=0.3, transformer_impl="local")
    fields.update(overrides)
    return ModelConfig(**fields)


def build_policy(cfg: ModelConfig, ctx: Any) -> Any:
    """This rank's stage of the tiny policy, with weights that do not depend on the layout."""
    from megatron_sip.model.build import build_gpt_model
    from megatron_sip.model.init import init_layout_invariant

    model = build_gpt_model(cfg, pre_process=ctx.is_first_stage, post_process=ctx.is_last_stage)
    init_layout_invariant(model, cfg, seed=SEED, tp_rank=ctx.tp_rank, tp_size=ctx.tp_size)
    return model


def rollout_record(batch: Any) -> Dict[str, torch.Tensor]:
    return {"tokens": batch.tokens_PKN, "lengths": batch.lengths_PK, "mask": batch.mask_PKN,
            "logprobs_sampling": batch.logprobs_sampling_PKN, "logprobs_model": batch.logprobs_model_PKN}


def main() -> None:
    from megatron_sip.parallel import destroy_parallel, init_parallel
    from megatron_sip.rollout import RolloutGenerator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cfg = tiny_model_config(tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp)
    ctx = init_parallel(cfg, seed=SEED)
    try:
        model = build_policy(cfg, ctx)
        generator = RolloutGenerator([model], ctx, eod_id=EOD_ID, vocab_size=VOCAB_SIZE)
        record = rollout_record(generator.generate(PREFIXES, **GENERATE_KWARGS))
        record["training_after"] = torch.tensor(model.training)
        torch.save(record, args.out / f"rank{ctx.rank}.pt")
    finally:
        destroy_parallel()


if __name__ == "__main__":
    main()
