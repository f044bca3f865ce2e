"""One forward pass of the policy for generation, across pipeline stages.

Pipeline parallelism: generation runs *across the stages*, not on a gathered copy of the model.
Each rank keeps its own layers and their KV cache; a forward pass (the prefill, or one decode
step) runs stage after stage, the activations going forward by point-to-point send/recv over the
pipeline group, and the last stage broadcasts the sampled tokens back over that group so the first
stage can embed them. Why not gather the weights: that needs a full model copy per rank (what PP
exists to avoid) and a weight all-gather after every optimizer step.
Cost: per decode step, PP-1 sends of [1, B, H] activations and one broadcast of B token ids; the
stages work one after the other, so during generation each rank idles (PP-1)/PP of the time (no
micro-batch interleaving: decoding is latency-bound and B rows already share each step).

Tensor parallelism needs nothing here: logits are gathered over the TP group inside the model
(`runtime_gather_output`), so every TP rank holds the same full-vocabulary logits.

Legend: B rows, S positions in this forward pass, H hidden size, Vp padded vocabulary.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from megatron_sip.compat.versions import forward_kwargs
from megatron_sip.parallel import ParallelContext


class PipelineForward:
    """Runs the local model chunk as one stage of a generation forward pass."""

    def __init__(self, model: Any, ctx: ParallelContext) -> None:
        self.model, self.ctx = model, ctx
        config = model.config
        self.hidden_size = config.hidden_size
        self.activation_dtype = getattr(config, "pipeline_dtype", None) or config.params_dtype
        self.stage_ranks = dist.get_process_group_ranks(ctx.pp_group) if ctx.pp_size > 1 else [ctx.rank]

    def last_logits(self, tokens_BS: torch.Tensor, position_ids_BS: torch.Tensor, context: Any) -> Optional[torch.Tensor]:
        """Logits [B, Vp] at the last position, on the last stage; None on the other stages."""
        kwargs = forward_kwargs(self.model, context)
        if self.ctx.is_first_stage:
            output = self.model(tokens_BS, position_ids_BS, None, **kwargs)
        else:
            self.model.set_input_tensor(self._receive_activations(*tokens_BS.shape))
            output = self.model(None, None, None, **kwargs)
        if not self.ctx.is_last_stage:
            # Not the last stage: `output` is the hidden states [S, B, H] for the next stage.
            dist.send(output.contiguous(), dst=self.stage_ranks[self.ctx.pp_rank + 1], group=self.ctx.pp_group)
            return None
        return output[:, -1, :]

    def run_stage(self, *, first: Callable[[], torch.Tensor], body: Callable[[torch.Tensor], torch.Tensor],
                  head: Callable[[torch.Tensor], torch.Tensor], num_rows: int, num_positions: int,
                  ) -> Optional[torch.Tensor]:
        """The same pass for an engine that runs the stage's pieces itself: `first()` gives the
        [S, B, H] input on the first stage (others receive it), `body` runs the local layers,
        `head` turns the last stage's hidden states into [B, Vp] logits."""
        hidden_SBH = first() if self.ctx.is_first_stage else self._receive_activations(num_rows, num_positions)
        hidden_SBH = body(hidden_SBH)
        if not self.ctx.is_last_stage:
            dist.send(hidden_SBH.contiguous(), dst=self.stage_ranks[self.ctx.pp_rank + 1], group=self.ctx.pp_group)
            return None
        return head(hidden_SBH)

    def _receive_activations(self, num_rows: int, num_positions: int) -> torch.Tensor:
        hidden_SBH = torch.empty(num_positions, num_rows, self.hidden_size, dtype=self.activation_dtype,
                                 device=self.ctx.device)
        dist.recv(hidden_SBH, src=self.stage_ranks[self.ctx.pp_rank - 1], group=self.ctx.pp_group)
        return hidden_SBH

    def from_last_stage(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` as the last stage holds it, on every stage (in place; a no-op without PP).
        Other stages pass a buffer of the same shape and dtype."""
        if self.ctx.pp_size > 1:
            dist.broadcast(tensor, src=self.stage_ranks[-1], group=self.ctx.pp_group)
        return tensor
