"""The model side of one generation pass: prefill, then one forward per decode step.

Two engines (chosen by `megatron_sip.compat.inference.choose_rollout_engine`):
- `LayerPass` ("layers"): Megatron's layer modules with our KV cache (`layer_engine`); prefixes
  of any lengths share a pass; on CUDA the decode step can be replayed as a CUDA graph.
- `StaticPass` ("static", the fallback): `GPTModel.forward` with Megatron-Core's
  `StaticInferenceContext`; one pass per prefix length.

Both return, on the last pipeline stage, [B, Vp] logits for the next token of every row
(prefix-major rows: prefix g of the pass owns rows g*K .. g*K+K-1), and None on other stages.

Legend: B rows, G prefixes, K samples per prefix, L prefix length, S positions, Vp padded vocabulary.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional

import torch

from megatron_sip.parallel import ParallelContext
from megatron_sip.rollout import mcore
from megatron_sip.rollout.layer_engine import LayerCache, LayerStage, rows_of
from megatron_sip.rollout.stages import PipelineForward


class StaticPass:
    """Prefixes of one length through `GPTModel.forward` and Megatron's static KV cache."""

    same_length_only = True

    def __init__(self, model: Any, ctx: ParallelContext, prefixes: List[torch.Tensor], *, num_samples: int,
                 max_new_tokens: int) -> None:
        self.stages, self.ctx = PipelineForward(model, ctx), ctx
        self.prefixes_GL = torch.stack(prefixes).to(ctx.device)
        self.num_samples = num_samples
        self.prefix_len = self.prefixes_GL.shape[1]
        self.context = mcore.new_static_context(max_batch_size=len(prefixes) * num_samples,
                                                max_sequence_length=self.prefix_len + max_new_tokens)

    def prefill(self) -> Optional[torch.Tensor]:
        num_prefixes = self.prefixes_GL.shape[0]
        positions_GL = torch.arange(self.prefix_len, device=self.ctx.device).expand(num_prefixes, -1)
        logits_GVp = self.stages.last_logits(self.prefixes_GL, positions_GL, self.context)
        mcore.expand_prefix_cache(self.context, num_prefixes=num_prefixes, num_samples=self.num_samples,
                                  prefix_len=self.prefix_len)
        mcore.start_decoding(self.context, sequence_len_offset=self.prefix_len)
        return None if logits_GVp is None else logits_GVp.repeat_interleave(self.num_samples, dim=0)

    def step(self, tokens_B: torch.Tensor, step: int) -> Optional[torch.Tensor]:
        """Feed the tokens sampled at decode step `step` (0-based); logits for the next ones."""
        positions_B1 = torch.full((tokens_B.shape[0], 1), self.prefix_len + step, dtype=torch.int64,
                                  device=self.ctx.device)
        logits_BVp = self.stages.last_logits(tokens_B[:, None], positions_B1, self.context)
        mcore.advance(self.context, 1)
        return logits_BVp

    def close(self) -> None:
        mcore.release(self.context)


class LayerPass:
    """Prefixes of any lengths through the layer modules, each row at its own position."""

    same_length_only = False

    def __init__(self, model: Any, ctx: ParallelContext, prefixes: List[torch.Tensor], *, num_samples: int,
                 max_new_tokens: int, cuda_graphs: bool = False) -> None:
        self.stage, self.ctx = LayerStage(model), ctx
        self.pipeline = PipelineForward(model, ctx)
        self.prefixes = [p.to(ctx.device) for p in prefixes]
        self.num_samples = num_samples
        lengths = torch.tensor([p.numel() for p in prefixes], dtype=torch.int64, device=ctx.device)
        self.prefix_lengths_B = lengths.repeat_interleave(num_samples)
        self.max_prefix_len = max(p.numel() for p in prefixes)
        self.max_positions = self.max_prefix_len + max_new_tokens
        num_rows = len(prefixes) * num_samples
        self.cache: LayerCache = self.stage.new_cache(num_rows=num_rows, max_positions=self.max_positions,
                                                      device=ctx.device)
        self.tables_2SD = self.stage.rotary_tables(self.max_positions)
        self.graph = None
        if cuda_graphs:
            from megatron_sip.rollout.cuda_graph import GraphedDecodeStep

            self.graph = GraphedDecodeStep(self._decode_forward, num_rows=num_rows, device=ctx.device)

    def prefill(self) -> Optional[torch.Tensor]:
        """One causal forward per distinct prefix length; their rows' logits merged."""
        by_length: Dict[int, List[int]] = defaultdict(list)
        for index, prefix in enumerate(self.prefixes):
            by_length[prefix.numel()].append(index)
        logits_BVp = None
        for length, group in sorted(by_length.items()):
            tokens_GL = torch.stack([self.prefixes[i] for i in group])
            positions_GL = torch.arange(length, device=self.ctx.device).expand(len(group), -1)
            rows_Bi = rows_of(group, self.num_samples, self.ctx.device)
            logits_GVp = self.pipeline.run_stage(
                first=lambda: self.stage.embed(tokens_GL, positions_GL),
                body=lambda hidden: self.stage.prefill(hidden, self.cache, rows_Bi, num_samples=self.num_samples,
                                                      tables_2SD=self.tables_2SD),
                head=self.stage.logits, num_rows=len(group), num_positions=length)
            if logits_GVp is not None:
                if logits_BVp is None:
                    logits_BVp = logits_GVp.new_empty(self.prefix_lengths_B.shape[0], logits_GVp.shape[-1])
                logits_BVp[rows_Bi] = logits_GVp.repeat_interleave(self.num_samples, dim=0)
        return logits_BVp

    def step(self, tokens_B: torch.Tensor, step: int) -> Optional[torch.Tensor]:
        positions_B = self.prefix_lengths_B + step
        if self.graph is not None:
            return self.graph(tokens_B, positions_B)
        # Host-side bound on the attended positions: no row is past max prefix length + step.
        return self._decode_forward(tokens_B, positions_B, num_positions=self.max_prefix_len + step + 1)

    def _decode_forward(self, tokens_B: torch.Tensor, positions_B: torch.Tensor, *,
                        num_positions: Optional[int] = None) -> Optional[torch.Tensor]:
        num_positions = num_positions or self.max_positions
        return self.pipeline.run_stage(
            first=lambda: self.stage.embed(tokens_B[:, None], positions_B[:, None]),
            body=lambda hidden: self.stage.decode(hidden, self.cache, positions_B, num_positions=num_positions,
                                                 tables_2SD=self.tables_2SD),
            head=self.stage.logits, num_rows=tokens_B.shape[0], num_positions=1)

    def close(self) -> None:
        self.cache.release()
        self.graph = None
