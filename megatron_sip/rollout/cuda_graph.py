"""The `layers` engine's decode step replayed as a CUDA graph (CUDA, no pipeline split).

NOT RUN YET: written without a GPU (docs/rollouts.md); `bench/gpu_check.sh` runs it against the
eager step. CPU tests cover only the choice of engine.

A decode step launches ~20 small kernels per layer whose CPU-side launch cost dominates at small
batch sizes; a CUDA graph replays all of them with one launch. A graph fixes shapes and memory
addresses, so:
- tokens and positions are copied into static input buffers before each replay;
- attention runs over the whole cache length (rows are masked past their own position) instead
  of the eager step's growing bound;
- the KV cache buffers are allocated before capture and stay in place for the pass.
Capture happens on the first step of a pass, after two eager warm-up runs on a side stream (as
torch requires). Warm-up and capture see the first step's real inputs, so the cache writes they
make are exactly those the replay makes again (the same keys at the same positions).
Tensor-parallel all-reduces and the logits all-gather are NCCL collectives, which CUDA graphs
capture.

Legend: B rows, Vp padded vocabulary.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

DecodeForward = Callable[[torch.Tensor, torch.Tensor], Optional[torch.Tensor]]


class GraphedDecodeStep:
    def __init__(self, forward: DecodeForward, *, num_rows: int, device: torch.device) -> None:
        self.forward = forward
        self.tokens_B = torch.zeros(num_rows, dtype=torch.int64, device=device)
        self.positions_B = torch.zeros(num_rows, dtype=torch.int64, device=device)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.logits_BVp: Optional[torch.Tensor] = None

    def __call__(self, tokens_B: torch.Tensor, positions_B: torch.Tensor) -> torch.Tensor:
        self.tokens_B.copy_(tokens_B)
        self.positions_B.copy_(positions_B)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        # The graph overwrites this buffer on the next replay: hand out a copy.
        return self.logits_BVp.clone()

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.forward(self.tokens_B, self.positions_B)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits_BVp = self.forward(self.tokens_B, self.positions_B)
