"""Build the SIP samples of a run: `data.paths` -> Megatron-Core's `BlendedMegatronDatasetBuilder`.

Every dataset is checked here, identically on every rank, before the builder runs: the builder
constructs datasets on rank 0 first and then barriers, so an error raised there alone would leave
the other ranks waiting forever. Call `build_sip_dataset` on every rank (it barriers when
torch.distributed is initialised).

Blends follow Megatron: `[w1, P1, w2, P2]` draws from P_i in proportion w_i (Megatron's
error-minimising blending index, so any prefix of the sample order follows the weights closely);
`[P1, P2]` without weights weighs each dataset by its samples per epoch. The blend order of the
first n samples does not depend on how many samples are built, so `megatron-sip sample` and
`megatron-sip rewrite` see the trainer's samples whatever count they ask for.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Dict, List, Optional

import torch
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.utils import log_single_rank

from megatron_sip.data.blend import Blend, parse_blend
from megatron_sip.data.config import DataConfig
from megatron_sip.data.dataset import SIPDataset, SIPDatasetConfig, SIPSample, too_short_error
from megatron_sip.data.documents import IndexedDocuments
from megatron_sip.data.indexed import indexed_dataset_exists, max_token_id
from megatron_sip.data.rewrite_store import check_meta, index_digest, read_manifest, store_dir_for
from megatron_sip.data.splits import SplitSchedule
from megatron_sip.errors import ConfigError

logger = logging.getLogger(__name__)

TRAIN_PATHS = "data.paths"
EVAL_PATHS = "data.eval_paths"


class SIPSampleSource(torch.utils.data.Dataset):
    """The blended sample order of a run: `source[i]` is the i-th sample (over all DP ranks)."""

    def __init__(self, top_level, prefixes: List[str], datasets: List[SIPDataset]) -> None:
        self._top = top_level
        self.prefixes = prefixes
        """Dataset path prefixes in blend order (`SIPSample.dataset_id` indexes this)."""
        self.datasets = datasets
        """The SIPDataset of each prefix."""

    def __len__(self) -> int:
        return len(self._top)

    def __getitem__(self, index: int) -> SIPSample:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is beyond the {len(self)} samples built")
        return SIPSample.from_item(self._top[index])

    @property
    def num_skipped_docs(self) -> Dict[str, int]:
        """Documents shorter than min_prefix_len + N, per dataset."""
        return {prefix: ds.schedule.num_skipped_docs for prefix, ds in zip(self.prefixes, self.datasets)}


def build_sip_dataset(data: DataConfig, *, suffix_len: int, vocab_size: int, num_samples: int,
                      eod_id: Optional[int], paths_key: str = TRAIN_PATHS, use_rewrites: bool = True,
                      is_built_on_rank: Optional[Callable[[], bool]] = None
                      ) -> Optional[SIPSampleSource]:
    """The samples of `data.paths` (or `data.eval_paths`), `num_samples` of them at least;
    None on a rank where `is_built_on_rank()` is False (Megatron's convention).

    suffix_len: N, tokens per suffix (`sip.suffix_len`).
    vocab_size: the model's vocabulary (`model.vocab_size`): token ids must lie below it.
    num_samples: samples to build (a run trains on `TrainConfig.num_samples`).
    eod_id: the end-of-document id the documents end with (`TextCodec.eod_id`), stripped before
        cutting; None when they end with none.
    is_built_on_rank: Megatron's hook; None = every rank builds (each reads the files itself).
    """
    blend = _blend(data, paths_key)
    config = _dataset_config(data, blend, suffix_len=suffix_len, vocab_size=vocab_size, eod_id=eod_id,
                             use_rewrites=use_rewrites)
    if blend is not None:
        samples_per_epoch = _check_datasets(blend, config, key=paths_key, vocab_size=vocab_size)
        if blend.weights is None and len(blend.prefixes) > 1:
            # Megatron would cap an unweighted blend at one epoch; explicit weights do not.
            weighted = (blend.prefixes, samples_per_epoch)
            config = dataclasses.replace(config, blend=weighted)
    builder = BlendedMegatronDatasetBuilder(SIPDataset, [num_samples, 0, 0],
                                            is_built_on_rank or (lambda: True), config)
    top = builder.build()[0]
    if top is None:
        return None
    datasets = list(top.datasets) if isinstance(top, BlendedDataset) else [top]
    prefixes = blend.prefixes if blend is not None else ["synthetic"]
    for prefix, dataset in zip(prefixes, datasets):
        log_single_rank(logger, logging.INFO, f"{prefix}: {dataset.schedule.samples_per_epoch} "
                        f"samples per epoch, {dataset.schedule.num_skipped_docs} documents shorter "
                        f"than {config.min_prefix_len + config.suffix_len} tokens skipped")
    return SIPSampleSource(top, prefixes, datasets)


def _blend(data: DataConfig, paths_key: str) -> Optional[Blend]:
    if paths_key == TRAIN_PATHS:
        return parse_blend(data.paths, key=paths_key)
    if paths_key == EVAL_PATHS:
        blend = parse_blend(data.eval_paths, key=paths_key)
        if blend is None:
            raise ConfigError(EVAL_PATHS, "is empty: name the held-out datasets")
        return blend
    raise ValueError(f"paths_key must be {TRAIN_PATHS} or {EVAL_PATHS}, got {paths_key}")


def _dataset_config(data: DataConfig, blend: Optional[Blend], *, suffix_len: int, vocab_size: int,
                    eod_id: Optional[int], use_rewrites: bool) -> SIPDatasetConfig:
    return SIPDatasetConfig(
        random_seed=data.seed,
        sequence_length=data.max_prefix_len + suffix_len,
        blend=None if blend is None else (blend.prefixes, blend.weights),
        split="1,0,0" if blend is not None else None,  # every document trains; held-out sets are
        path_to_cache=None,                            # separate datasets (data.eval_paths)
        suffix_len=suffix_len, max_prefix_len=data.max_prefix_len,
        min_prefix_len=data.min_prefix_len, samples_per_doc=data.samples_per_doc,
        eod_id=eod_id, rewrite_store=data.rewrite_store, use_rewrites=use_rewrites, tokenizer=data.tokenizer,
        synthetic_vocab_size=vocab_size,
    )


def _check_datasets(blend: Blend, config: SIPDatasetConfig, *, key: str, vocab_size: int) -> List[float]:
    """Open and check every dataset (token ids within the model's vocabulary: an id beyond it is
    a device-side assert on a GPU) and its rewrite store; samples per epoch of each."""
    samples_per_epoch = []
    for prefix in blend.prefixes:
        if not indexed_dataset_exists(prefix):
            raise ConfigError(key, f"'{prefix}': no indexed dataset there (expected {prefix}.bin "
                              f"and {prefix}.idx; build them with megatron-sip preprocess)")
        documents = IndexedDocuments(prefix, eod_id=config.eod_id)
        largest = max_token_id(prefix)
        if largest >= vocab_size:
            raise ConfigError(key, f"'{prefix}' holds token id {largest}, beyond the model's vocabulary "
                              f"(model.vocab_size={vocab_size}): it was tokenized for another model; "
                              "preprocess it with the model's tokenizer (data.tokenizer)")
        schedule = SplitSchedule(documents.text_lengths, config.split_rule())
        if schedule.samples_per_epoch == 0:
            raise too_short_error(prefix, documents, config)
        samples_per_epoch.append(float(schedule.samples_per_epoch))
        if config.use_rewrites:
            store = store_dir_for(prefix, config.rewrite_store)
            manifest = read_manifest(store)
            if manifest is not None:
                check_meta(store, manifest.meta, num_docs=documents.num_docs, suffix_len=config.suffix_len,
                           tokenizer=config.tokenizer, digest=index_digest(prefix))
    return samples_per_epoch

