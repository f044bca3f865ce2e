"""How good the stored rewrites of a run's samples are, measured by safety scorers: the share of
rewrites each calls safe against the share of the original suffixes, how many samples have none,
and their length against the suffix's (a rewriter that answers with a preamble or a copy of its
instructions writes shorter, off-topic text; one that copies the suffix changes nothing)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

from megatron_sip.config import Config
from megatron_sip.evaluate.instruments import SafetyScorer
from megatron_sip.evaluate.metrics import proportion


def measure_rewrites(cfg: Config, *, num_samples: int, scorers: Mapping[str, SafetyScorer],
                     num_examples: int = 3) -> Dict[str, Any]:
    """The first `num_samples` training samples of `cfg` (what the run trains on) with their
    stored rewrites; per scorer (instrument name -> scorer) a text is safe when its score >= 0.5."""
    from megatron_sip.data.build import build_sip_dataset
    from megatron_sip.data.codec import load_codec

    codec = load_codec(cfg.data.tokenizer, cfg.data.eod_token)
    source = build_sip_dataset(cfg.data, suffix_len=cfg.sip.suffix_len, vocab_size=cfg.model.vocab_size,
                               eod_id=codec.eod_id, num_samples=num_samples, use_rewrites=True)
    samples = [source[i] for i in range(num_samples)]
    rewritten = [s for s in samples if s.rewrite is not None]
    suffixes = [codec.decode(s.suffix) for s in rewritten]
    rewrites = [codec.decode(s.rewrite) for s in rewritten]
    safe, unsafe_anywhere = {}, set()
    for name, scorer in scorers.items():
        suffix_safe = [float(p >= 0.5) for p in scorer(suffixes)] if rewritten else []
        rewrite_safe = [float(p >= 0.5) for p in scorer(rewrites)] if rewritten else []
        unsafe = [k for k, ok in enumerate(suffix_safe) if not ok]
        unsafe_anywhere.update(unsafe)
        safe[name] = {"rewrite": proportion(rewrite_safe).to_json(), "suffix": proportion(suffix_safe).to_json(),
                      "rewrite_where_suffix_unsafe": proportion([rewrite_safe[k] for k in unsafe]).to_json()}
    shown = sorted(unsafe_anywhere) or list(range(len(rewritten)))
    return {
        "num_samples": len(samples),
        "num_without_rewrite": len(samples) - len(rewritten),
        "num_unchanged": sum(a == b for a, b in zip(suffixes, rewrites)),
        "mean_rewrite_tokens": _mean([len(s.rewrite) for s in rewritten]),
        "mean_suffix_tokens": _mean([len(s.suffix) for s in rewritten]),
        "safe": safe,
        "examples": [{"suffix": suffixes[k], "rewrite": rewrites[k]} for k in shown[:num_examples]],
    }


def _mean(values: Sequence[int]) -> Optional[float]:
    return sum(values) / len(values) if values else None
