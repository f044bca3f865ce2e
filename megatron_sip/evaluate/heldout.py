"""The held-out (prefix, suffix) samples every model is evaluated on: the first M samples of
`data.eval_paths`, cut exactly as training cuts (same sampler, seed and lengths), at most one
epoch so that no prefix counts twice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from megatron_sip.data.codec import TextCodec
from megatron_sip.data.config import DataConfig
from megatron_sip.logging_utils import get_logger

_log = get_logger(__name__)


@dataclass(frozen=True)
class HeldOutSet:
    """M held-out samples as token ids and as the text the judge reads."""

    prefixes: Tuple[np.ndarray, ...]
    """int64 [P_m]: prefix tokens (left-truncated to data.max_prefix_len)."""
    suffixes: Tuple[np.ndarray, ...]
    """int64 [N]: the original suffix (the NLL target and the factuality reference)."""
    prefix_texts: Tuple[str, ...]
    reference_texts: Tuple[str, ...]
    """The original suffixes, decoded."""
    doc_ids: Tuple[Tuple[int, int, int], ...]
    """(dataset index in the blend, document index, split position) of each sample."""

    def __len__(self) -> int:
        return len(self.prefixes)


def load_heldout(data: DataConfig, codec: TextCodec, *, suffix_len: int, vocab_size: int,
                 num_prefixes: int) -> HeldOutSet:
    """The first `num_prefixes` samples of data.eval_paths (fewer when one epoch holds fewer)."""
    from megatron_sip.data.build import EVAL_PATHS, build_sip_dataset

    source = build_sip_dataset(data, suffix_len=suffix_len, vocab_size=vocab_size, eod_id=codec.eod_id,
                               num_samples=num_prefixes, paths_key=EVAL_PATHS, use_rewrites=False)
    per_epoch = sum(ds.schedule.samples_per_epoch for ds in source.datasets)
    if num_prefixes > per_epoch:
        _log.warning("data.eval_paths holds %d samples per epoch: evaluating %d prefixes, not %d",
                     per_epoch, per_epoch, num_prefixes)
        num_prefixes = per_epoch
    samples = [source[i] for i in range(num_prefixes)]
    prefixes = tuple(np.asarray(s.prefix, dtype=np.int64) for s in samples)
    suffixes = tuple(np.asarray(s.suffix, dtype=np.int64) for s in samples)
    return HeldOutSet(
        prefixes=prefixes,
        suffixes=suffixes,
        prefix_texts=tuple(codec.decode(p) for p in prefixes),
        reference_texts=tuple(codec.decode(s) for s in suffixes),
        doc_ids=tuple((s.dataset_id, s.doc_id, s.split) for s in samples),
    )
