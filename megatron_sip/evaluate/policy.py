"""Each model's side of the evaluation: load its checkpoint into one GPTModel (built once, reused
for the baseline), generate, score the original suffixes and, with --pairs, both sides of every
preference pair."""

from __future__ import annotations

from typing import List, Optional, Sequence

from megatron_sip.config import Config
from megatron_sip.data.codec import TextCodec
from megatron_sip.evaluate.checkpoints import ModelSource, load_weights
from megatron_sip.evaluate.generate import continuations
from megatron_sip.evaluate.heldout import HeldOutSet
from megatron_sip.evaluate.nll import suffix_nll
from megatron_sip.evaluate.pairs import PairScores, PreferencePairs
from megatron_sip.evaluate.progress import ProgressFactory, no_progress
from megatron_sip.evaluate.summary import ModelResult
from megatron_sip.logging_utils import get_logger
from megatron_sip.parallel import ParallelContext

_log = get_logger(__name__)


def run_models(cfg: Config, ctx: ParallelContext, sources: Sequence[ModelSource], heldout: HeldOutSet,
               codec: TextCodec, *, batch_size: int, temperature: float = 0.0,
               pairs: Optional[PreferencePairs] = None, progress: ProgressFactory = no_progress) -> List[ModelResult]:
    from megatron_sip.model.build import build_gpt_model
    from megatron_sip.model.logprob_head import LogprobHead

    model = build_gpt_model(cfg.model, pre_process=True, post_process=True)
    head = LogprobHead(impl=cfg.sip.logprobs_impl, tp_group=ctx.tp_group, backend=cfg.sip.logprobs_backend)
    results = []
    for source in sources:
        step = load_weights(source, model, ctx=ctx)
        _log.info("%s: %s (step %d)", source.label, source.checkpoint_dir, step)
        tokens = continuations(model, ctx, heldout.prefixes, eod_id=codec.eod_id, vocab_size=cfg.model.vocab_size,
                               max_new_tokens=cfg.sip.suffix_len, batch_size=batch_size, temperature=temperature,
                               progress=progress, desc=f"generate {source.label}")
        sums, counts = suffix_nll(model, head, heldout.prefixes, heldout.suffixes, pad_id=codec.eod_id,
                                  device=ctx.device, batch_size=batch_size, progress=progress,
                                  desc=f"nll {source.label}")
        pair_scores = None
        if pairs is not None:
            scored = [suffix_nll(model, head, pairs.prefixes, side, pad_id=codec.eod_id, device=ctx.device,
                                 batch_size=batch_size, progress=progress, desc=f"pairs {name} {source.label}")
                      for name, side in (("chosen", pairs.chosen), ("rejected", pairs.rejected))]
            pair_scores = PairScores(chosen_nll=tuple(scored[0][0]), chosen_tokens=tuple(scored[0][1]),
                                     rejected_nll=tuple(scored[1][0]), rejected_tokens=tuple(scored[1][1]))
        results.append(ModelResult(source=source, step=step, texts=tuple(codec.decode(t) for t in tokens),
                                   num_generated_tokens=tuple(len(t) for t in tokens),
                                   nll_sums=tuple(sums), nll_tokens=tuple(counts), pair_scores=pair_scores))
    return results
