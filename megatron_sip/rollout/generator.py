"""K sampled continuations of every prefix, with a KV cache whose prefix part is encoded once.

Per pass (a group of prefixes of one length L, see below):
    prefill  [G, L] -> KV cache rows 0..G-1, logits at position L-1
    expand   cache rows g -> g*K .. g*K+K-1 (no recomputation of the prefix)
    decode   N-1 steps of [G*K, 1] tokens, each reading the cache and appending to it
Sampling happens after the prefill and after every decode step (`sampling.sample_next`).

Prefixes of different lengths: grouped by length, one pass per length. Megatron's static
context keeps a single sequence offset for the batch and applies rotary embeddings by position
in the buffer, so mixing lengths in one pass would need left padding plus a padding mask, which
Transformer Engine's attention ignores under its causal/no-mask types. Grouping needs no mask,
works with every layer spec, and makes a prefix's results independent of its batch mates. The
cost: with all-distinct lengths each decode step runs K rows instead of P*K. Bucketing prefix
lengths in the sampler would recover the batch (left for the data side to decide).

Legend: P prefixes, K samples per prefix, N new tokens per sample, G prefixes in one pass,
B = G*K rows of a pass, L prefix length, T decode steps run so far, Vp padded vocabulary.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from megatron_sip.model.build import unwrap_model
from megatron_sip.parallel import ParallelContext
from megatron_sip.compat.inference import RolloutEngineChoice, choose_rollout_engine
from megatron_sip.compat.versions import inference_scope
from megatron_sip.logging_utils import get_logger
from megatron_sip.rollout import mcore
from megatron_sip.rollout.layer_engine import unsupported_reason
from megatron_sip.rollout.passes import LayerPass, StaticPass
from megatron_sip.rollout.sampling import SamplingParams, prefix_uniforms, sample_next
from megatron_sip.rollout.stages import PipelineForward

PrefixInput = Union[Sequence[Sequence[int]], torch.Tensor]
_log = get_logger(__name__)


@dataclass(frozen=True)
class RolloutBatch:
    """K samples of up to N new tokens for each of P prefixes (CPU tensors, prefix-major)."""

    tokens_PKN: torch.Tensor
    """Sampled token ids (int64); after a sample's EOD, filled with the EOD id."""
    lengths_PK: torch.Tensor
    """Tokens per sample, its EOD included (int64, 1..N)."""
    logprobs_sampling_PKN: torch.Tensor
    """log q of each token under the sampling distribution (temperature, top-k, top-p); 0 where
    masked and for greedy decoding (float32)."""
    logprobs_model_PKN: torch.Tensor
    """log p of each token under the raw model (temperature 1, whole padded vocabulary, as the
    training forward pass computes it); 0 where masked (float32)."""
    mask_PKN: torch.Tensor
    """True for the tokens of the sample (up to and including its EOD)."""

    @property
    def num_prefixes(self) -> int:
        return self.tokens_PKN.shape[0]

    @property
    def num_samples(self) -> int:
        return self.tokens_PKN.shape[1]

    def continuations(self, *, eod_id: Optional[int] = None) -> List[List[np.ndarray]]:
        """[prefix][sample] -> its int64 tokens without padding; without the final EOD too when
        `eod_id` is given (what judges and the candidate builder read)."""
        result = []
        for tokens_KN, lengths_K in zip(self.tokens_PKN.numpy(), self.lengths_PK.tolist()):
            samples = []
            for tokens_N, length in zip(tokens_KN, lengths_K):
                tokens = tokens_N[:length]
                if eod_id is not None and length and tokens[-1] == eod_id:
                    tokens = tokens[:-1]
                samples.append(tokens.copy())
            result.append(samples)
        return result


@dataclass(frozen=True)
class _PassOutput:
    tokens_BN: torch.Tensor
    logprobs_sampling_BN: torch.Tensor
    logprobs_model_BN: torch.Tensor


def mask_through_first(tokens_BN: torch.Tensor, eod_id: Optional[int]) -> torch.Tensor:
    """True up to and including each row's first EOD (everywhere when there is none)."""
    if eod_id is None:
        return torch.ones_like(tokens_BN, dtype=torch.bool)
    is_eod_BN = tokens_BN == eod_id
    eods_before_BN = torch.cumsum(is_eod_BN.to(torch.int32), dim=-1) - is_eod_BN.to(torch.int32)
    return eods_before_BN == 0


class RolloutGenerator:
    """Samples continuations from the policy between optimizer steps.

    `model_chunks`: the training model chunks (Megatron DDP-wrapped or not), one per rank
    (virtual pipeline stages are not supported). Every rank of a model-parallel group (its TP and
    PP peers) must call `generate` with the same arguments; data-parallel replicas call it with
    their own prefixes and never communicate.

    `eod_id` ends a sample (None: samples always run to `max_new_tokens`). `vocab_size` is the
    tokenizer's size: ids at or above it (the embedding's padding) are never sampled.
    `max_rows_per_pass` bounds the rows (prefixes x samples) decoded together, hence the KV cache;
    None = all prefixes in one pass (one pass per length with the static engine).
    `engine`: `auto` (the `layers` engine where it reproduces the model, else `static`), `layers`
    or `static`; `cuda_graphs`: None = on where possible (CUDA, no pipeline split), False = off
    (`megatron_sip.compat.inference` decides and says why).
    """

    def __init__(self, model_chunks: Sequence[Any], ctx: ParallelContext, *, eod_id: Optional[int], vocab_size: int,
                 max_rows_per_pass: Optional[int] = None, engine: str = "auto",
                 cuda_graphs: Optional[bool] = None) -> None:
        if len(model_chunks) != 1:
            raise ValueError(f"rollouts need one model chunk per rank, got {len(model_chunks)} "
                             "(virtual pipeline stages are not supported)")
        if max_rows_per_pass is not None and max_rows_per_pass < 1:
            raise ValueError(f"max_rows_per_pass must be positive or None, got {max_rows_per_pass}")
        self.wrapped = model_chunks[0]
        self.model = unwrap_model(self.wrapped)
        if not 0 < vocab_size <= self.model.vocab_size:
            raise ValueError(f"vocab_size {vocab_size} must be in [1, the model's padded vocabulary "
                             f"{self.model.vocab_size}]")
        self.ctx = ctx
        self.eod_id, self.vocab_size = eod_id, vocab_size
        self.max_rows_per_pass = max_rows_per_pass
        self.stages = PipelineForward(self.model, ctx)
        self.engine: RolloutEngineChoice = choose_rollout_engine(
            requested=engine, device=ctx.device, unsupported=unsupported_reason(self.model),
            pipeline_parallel_size=ctx.pp_size, cuda_graphs=cuda_graphs)
        _log.info("rollout engine: %s (%s)", self.engine.name, self.engine.reason)

    def generate(self, prefixes: PrefixInput, *, num_samples: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                 prefix_ids: Optional[Sequence[int]] = None, prefix_lengths: Optional[Sequence[int]] = None,
                 ) -> RolloutBatch:
        """`num_samples` continuations of at most `max_new_tokens` tokens for each prefix.

        `prefixes`: token-id sequences, or a right-padded [P, L] tensor with `prefix_lengths`.
        Sample k of prefix p depends only on the policy, `seed` and `prefix_ids[p]` (default: p),
        not on the other prefixes or the parallel layout: pass global, unique ids (dataset sample
        indices) and a seed that changes with the step to get fresh, reproducible randomness.
        `temperature=0` decodes greedily.
        """
        params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
        token_lists = self._prefix_tensors(prefixes, prefix_lengths)
        ids = list(range(len(token_lists))) if prefix_ids is None else [int(i) for i in prefix_ids]
        self._validate(token_lists, ids, num_samples, max_new_tokens)
        batch = _empty_batch(len(token_lists), num_samples, max_new_tokens, self.eod_id)
        with self._generation_mode():
            for group in self._passes(token_lists, num_samples):
                uniforms_BN = torch.cat([prefix_uniforms(seed, ids[p], num_samples, max_new_tokens) for p in group])
                output = self._generate_pass([token_lists[p] for p in group], uniforms_BN,
                                             num_samples=num_samples, max_new_tokens=max_new_tokens, params=params)
                _scatter(batch, group, output, num_samples)
        return _finalize(batch, self.eod_id)

    # -- setup ------------------------------------------------------------------------------------
    @staticmethod
    def _prefix_tensors(prefixes: PrefixInput, lengths: Optional[Sequence[int]]) -> List[torch.Tensor]:
        if isinstance(prefixes, torch.Tensor):
            if prefixes.dim() != 2 or lengths is None:
                raise ValueError("a tensor of prefixes must be [P, L] and come with prefix_lengths")
            return [prefixes[p, :int(n)].detach().to("cpu", torch.int64) for p, n in enumerate(lengths)]
        if lengths is not None:
            raise ValueError("prefix_lengths goes with a padded [P, L] tensor, not with token lists")
        return [p.detach().to("cpu", torch.int64).reshape(-1) if isinstance(p, torch.Tensor)
                else torch.as_tensor(np.asarray(p, dtype=np.int64)).reshape(-1) for p in prefixes]

    def _validate(self, token_lists: List[torch.Tensor], ids: List[int], num_samples: int, max_new_tokens: int) -> None:
        if num_samples < 1 or max_new_tokens < 1:
            raise ValueError(f"num_samples and max_new_tokens must be positive, got {num_samples}, {max_new_tokens}")
        if len(ids) != len(token_lists):
            raise ValueError(f"{len(ids)} prefix_ids for {len(token_lists)} prefixes")
        limit = self.model.max_sequence_length
        for p, tokens in enumerate(token_lists):
            if tokens.numel() == 0:
                raise ValueError(f"prefix {p} is empty")
            if tokens.numel() + max_new_tokens > limit:
                raise ValueError(f"prefix {p}: {tokens.numel()} tokens + max_new_tokens={max_new_tokens} exceed "
                                 f"the model's sequence length {limit} (model.seq_length)")
            if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size:
                raise ValueError(f"prefix {p} has token ids outside [0, {self.vocab_size})")

    def _passes(self, token_lists: List[torch.Tensor], num_samples: int) -> Iterator[List[int]]:
        """Prefix indices of each pass: at most `max_rows_per_pass` rows; equal lengths only for
        the static engine."""
        per_pass = None if self.max_rows_per_pass is None else max(1, self.max_rows_per_pass // num_samples)
        if self.engine.name == "static":
            by_length: Dict[int, List[int]] = defaultdict(list)
            for p, tokens in enumerate(token_lists):
                by_length[tokens.numel()].append(p)
            groups = [by_length[length] for length in sorted(by_length)]
        else:
            groups = [list(range(len(token_lists)))]
        for group in groups:
            step = per_pass or len(group)
            for start in range(0, len(group), step):
                yield group[start:start + step]

    @contextlib.contextmanager
    def _generation_mode(self) -> Iterator[None]:
        """Eval mode (no dropout), no autograd, Megatron's inference flags; training mode restored
        afterwards whatever happens."""
        was_training = self.wrapped.training
        self.wrapped.eval()
        try:
            with torch.no_grad(), inference_scope(), mcore.sequence_parallel_off(self.model):
                yield
        finally:
            self.wrapped.train(was_training)

    # -- one pass ---------------------------------------------------------------------------------
    def _open_pass(self, prefixes: List[torch.Tensor], *, num_samples: int, max_new_tokens: int):
        if self.engine.name == "static":
            return StaticPass(self.model, self.ctx, prefixes, num_samples=num_samples, max_new_tokens=max_new_tokens)
        return LayerPass(self.model, self.ctx, prefixes, num_samples=num_samples, max_new_tokens=max_new_tokens,
                         cuda_graphs=self.engine.cuda_graphs)

    def _generate_pass(self, prefixes: List[torch.Tensor], uniforms_BN: torch.Tensor, *, num_samples: int,
                       max_new_tokens: int, params: SamplingParams) -> _PassOutput:
        model_pass = self._open_pass(prefixes, num_samples=num_samples, max_new_tokens=max_new_tokens)
        try:
            return self._decode(model_pass, uniforms_BN.to(self.ctx.device), num_rows=len(prefixes) * num_samples,
                                params=params)
        finally:
            model_pass.close()

    def _decode(self, model_pass: Any, uniforms_BN: torch.Tensor, *, num_rows: int,
                params: SamplingParams) -> _PassOutput:
        """Prefill, then sample, feed back, repeat: N tokens or until every row has emitted EOD."""
        device, max_new_tokens = self.ctx.device, uniforms_BN.shape[1]
        tokens, logprobs = [], []
        finished_B = torch.zeros(num_rows, dtype=torch.bool, device=device)
        logits_BVp = model_pass.prefill()
        for step in range(max_new_tokens):
            tokens_B = torch.empty(num_rows, dtype=torch.int64, device=device)
            if logits_BVp is not None:  # last pipeline stage
                sampled = sample_next(logits_BVp, uniforms_BN[:, step], params, vocab_size=self.vocab_size)
                tokens_B.copy_(sampled.tokens_B)
                logprobs.append(torch.stack([sampled.logprobs_sampling_B, sampled.logprobs_model_B]))
            tokens.append(self.stages.from_last_stage(tokens_B))
            if step == max_new_tokens - 1 or self._all_finished(finished_B, tokens_B):
                break
            logits_BVp = model_pass.step(tokens_B, step)
        return self._pass_output(tokens, logprobs, num_rows)

    def _all_finished(self, finished_B: torch.Tensor, tokens_B: torch.Tensor) -> bool:
        """Marks rows that just emitted EOD; True once every row has (decided identically on all
        ranks, since all hold the same tokens)."""
        if self.eod_id is None:
            return False
        finished_B |= tokens_B == self.eod_id
        return bool(finished_B.all())

    def _pass_output(self, tokens: List[torch.Tensor], logprobs: List[torch.Tensor], num_rows: int) -> _PassOutput:
        tokens_BT = torch.stack(tokens, dim=1)
        logprobs_2BT = torch.empty(2, num_rows, tokens_BT.shape[1], dtype=torch.float32, device=self.ctx.device)
        if logprobs:
            logprobs_2BT.copy_(torch.stack(logprobs, dim=-1))
        self.stages.from_last_stage(logprobs_2BT)
        return _PassOutput(tokens_BT.cpu(), logprobs_2BT[0].cpu(), logprobs_2BT[1].cpu())


def _empty_batch(num_prefixes: int, num_samples: int, max_new_tokens: int,
                 eod_id: Optional[int]) -> Dict[str, torch.Tensor]:
    shape = (num_prefixes, num_samples, max_new_tokens)
    # Without an EOD no row stops early, so the filling is always overwritten.
    return {"tokens": torch.full(shape, 0 if eod_id is None else eod_id, dtype=torch.int64),
            "logprobs_sampling": torch.zeros(shape, dtype=torch.float32),
            "logprobs_model": torch.zeros(shape, dtype=torch.float32)}


def _scatter(batch: Dict[str, torch.Tensor], group: List[int], output: _PassOutput, num_samples: int) -> None:
    """Write a pass's rows (prefix-major) into the batch at its prefixes' positions."""
    num_steps = output.tokens_BN.shape[1]
    for name, rows_BT in (("tokens", output.tokens_BN), ("logprobs_sampling", output.logprobs_sampling_BN),
                          ("logprobs_model", output.logprobs_model_BN)):
        rows_GKT = rows_BT.view(len(group), num_samples, num_steps)
        for g, p in enumerate(group):
            batch[name][p, :, :num_steps] = rows_GKT[g]


def _finalize(batch: Dict[str, torch.Tensor], eod_id: Optional[int]) -> RolloutBatch:
    """Mask everything after each sample's first EOD; steps never run (all rows had finished)
    lie after it and keep their EOD filling."""
    tokens_PKN = batch["tokens"]
    mask_PKN = mask_through_first(tokens_PKN, eod_id)
    return RolloutBatch(
        tokens_PKN=tokens_PKN if eod_id is None else tokens_PKN.masked_fill(~mask_PKN, eod_id),
        lengths_PK=mask_PKN.sum(-1).to(torch.int64),
        logprobs_sampling_PKN=batch["logprobs_sampling"].masked_fill(~mask_PKN, 0.0),
        logprobs_model_PKN=batch["logprobs_model"].masked_fill(~mask_PKN, 0.0),
        mask_PKN=mask_PKN,
    )
