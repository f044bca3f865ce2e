"""Check a converted checkpoint against transformers: the same tokens through both models, fp32
logits compared. Runs as one process or under torchrun (tensor parallel: the vocab-parallel
logits are gathered over the TP group); rank 0 alone loads the transformers reference."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from megatron_sip.model.config import ModelConfig
from megatron_sip.model.convert_hf import find_model_config, load_megatron_weights


@dataclass(frozen=True)
class VerifyResult:
    max_abs_diff: float
    """Largest |logit(Megatron) - logit(transformers)| over all positions and the HF vocabulary."""
    num_sequences: int
    seq_length: int
    tensor_parallel_size: int


def _megatron_logits(model: torch.nn.Module, tokens_BS: torch.Tensor, vocab_size: int) -> torch.Tensor:
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    batch, seq = tokens_BS.shape
    position_ids_BS = torch.arange(seq).unsqueeze(0).expand(batch, seq)
    with torch.no_grad():
        logits_BSV = model(tokens_BS, position_ids_BS, None)
        # Each TP rank holds a contiguous slice of the (padded) vocabulary.
        logits_BSV = gather_from_tensor_model_parallel_region(logits_BSV)
    return logits_BSV[..., :vocab_size].float()


def verify_against_hf(checkpoint: Path, hf_source: str, *, tensor_parallel_size: int = 1,
                      model_cfg: Optional[ModelConfig] = None, num_sequences: int = 2, seq_length: int = 32,
                      seed: int = 0) -> VerifyResult:
    """Max |logit difference| between the checkpoint (at TP `tensor_parallel_size`) and the HF model."""
    from megatron_sip.model.build import build_gpt_model
    from megatron_sip.model.hf_io import load_hf_model
    from megatron_sip.parallel import destroy_parallel, init_parallel

    cfg = model_cfg or find_model_config(Path(checkpoint))
    cfg = dataclasses.replace(cfg, tensor_model_parallel_size=tensor_parallel_size, pipeline_model_parallel_size=1,
                              params_dtype="float32", transformer_impl="local",
                              transformer_overrides={**cfg.transformer_overrides, "perform_initialization": False})
    ctx = init_parallel(cfg, seed=seed)
    try:
        model = build_gpt_model(cfg, pre_process=True, post_process=True).eval()
        load_megatron_weights(model, checkpoint)
        generator = torch.Generator().manual_seed(seed)
        tokens_BS = torch.randint(0, cfg.vocab_size, (num_sequences, seq_length), generator=generator)
        logits_BSV = _megatron_logits(model, tokens_BS.to(ctx.device), cfg.vocab_size).cpu()
        diff = torch.zeros(1, dtype=torch.float64)
        if ctx.rank == 0:
            reference = load_hf_model(hf_source)
            with torch.no_grad():
                expected_BSV = reference(tokens_BS).logits.float()
            diff[0] = (logits_BSV - expected_BSV).abs().max().item()
        if ctx.world_size > 1:
            diff = diff.to(ctx.device)
            dist.broadcast(diff, src=0)
        return VerifyResult(float(diff[0]), num_sequences, seq_length, tensor_parallel_size)
    finally:
        destroy_parallel()
