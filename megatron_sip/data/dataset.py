"""`SIPDataset`: a Megatron-Core `MegatronDataset` whose samples are (prefix, suffix) cuts.

It plugs into `BlendedMegatronDatasetBuilder` like Megatron's `GPTDataset` (same low-level
`IndexedDataset`, same blend and split conventions), so a corpus preprocessed for pretraining is
used as it is. Sample i is a pure function of (seed, epoch, i) (see `splits.py`); its item is a
dict, as `BlendedDataset` expects, and `SIPSample.from_item` gives it a type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig
from megatron.core.datasets.megatron_dataset import MegatronDataset
from megatron.core.datasets.utils import Split

from megatron_sip.data.documents import DocumentSource, IndexedDocuments, SyntheticDocuments
from megatron_sip.data.rewrite_store import RewriteStoreReader, check_meta, index_digest, store_dir_for
from megatron_sip.data.splits import SplitRule, SplitSchedule
from megatron_sip.errors import ConfigError


@dataclass
class SIPDatasetConfig(BlendedMegatronDatasetConfig):
    """Megatron's dataset config plus the cut (built from the run config by `build.py`)."""

    suffix_len: int = 32
    """N: suffix tokens."""
    max_prefix_len: int = 448
    """Longest prefix; longer ones are left-truncated."""
    min_prefix_len: int = 16
    """Shortest prefix."""
    samples_per_doc: int = 1
    """Splits per eligible document per epoch."""
    eod_id: Optional[int] = None
    """End-of-document id stripped from the end of documents; None = strip nothing."""
    rewrite_store: Optional[str] = None
    """data.rewrite_store: where the stores are; None = beside each dataset."""
    use_rewrites: bool = True
    """Attach stored rewrites to samples."""
    tokenizer: str = ""
    """data.tokenizer: what a rewrite store must have been written with."""
    synthetic_vocab_size: int = 49152
    """Vocabulary of synthetic documents (mock mode, empty blend)."""
    synthetic_num_docs: int = 3072
    """Documents of the synthetic corpus (mock mode splits them 1:1:1 into train/valid/test)."""

    def split_rule(self) -> SplitRule:
        return SplitRule(suffix_len=self.suffix_len, min_prefix_len=self.min_prefix_len,
                         max_prefix_len=self.max_prefix_len, samples_per_doc=self.samples_per_doc,
                         seed=self.random_seed)


@dataclass(frozen=True)
class SIPSample:
    """One (prefix, suffix) cut and what is stored for it."""

    dataset_id: int
    """Index of the dataset in the blend."""
    doc_id: int
    """Document index within its dataset."""
    split: int
    """Token position of the first suffix token within the document."""
    prefix: np.ndarray
    """int64 [<= max_prefix_len]: the tokens before `split`, left-truncated."""
    suffix: np.ndarray
    """int64 [N]: the tokens from `split` on."""
    rewrite: Optional[np.ndarray] = None
    """int64 [1..N]: the stored rewrite of the suffix, if any."""
    judgments: Dict[str, float] = field(default_factory=dict)
    """Stored rollout-free judgments (e.g. suffix safety), if any."""

    @classmethod
    def from_item(cls, item: Dict[str, Any]) -> "SIPSample":
        rewrite = item["rewrite"] if item["has_rewrite"] else None
        return cls(dataset_id=int(item.get("dataset_id", 0)), doc_id=int(item["doc_id"]),
                   split=int(item["split"]), prefix=item["prefix"], suffix=item["suffix"],
                   rewrite=rewrite, judgments=dict(item["judgments"]))


class SIPDataset(MegatronDataset):
    """Samples of one low-level dataset; `len` covers as many epochs as `num_samples` needs."""

    def __init__(self, documents: DocumentSource, dataset_path: Optional[str],
                 indices: np.ndarray, num_samples: Optional[int], index_split: Split,
                 config: SIPDatasetConfig) -> None:
        super().__init__(documents, dataset_path, indices, num_samples, index_split, config)
        self.documents = documents
        self.schedule = SplitSchedule(documents.text_lengths, config.split_rule(), doc_ids=indices)
        if self.schedule.samples_per_epoch == 0:
            raise too_short_error(dataset_path, documents, config)
        epochs = 1 if not num_samples else math.ceil(num_samples / self.schedule.samples_per_epoch)
        self._length = epochs * self.schedule.samples_per_epoch
        self.rewrites = self._open_rewrites(dataset_path, config)

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: DocumentSource) -> int:
        return low_level_dataset.num_docs

    @staticmethod
    def build_low_level_dataset(dataset_path: Optional[str],
                                config: SIPDatasetConfig) -> DocumentSource:
        if dataset_path is None:  # Megatron's mock mode: no blend configured
            return SyntheticDocuments(
                num_docs=config.synthetic_num_docs, min_length=config.min_prefix_len + config.suffix_len,
                max_length=config.max_prefix_len + 2 * config.suffix_len,
                vocab_size=config.synthetic_vocab_size, seed=config.random_seed)
        return IndexedDocuments(dataset_path, eod_id=config.eod_id)

    @staticmethod
    def _key_config_attributes() -> List[str]:
        return MegatronDataset._key_config_attributes() + [
            "suffix_len", "max_prefix_len", "min_prefix_len", "samples_per_doc", "eod_id"]

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        doc_ids, splits = self.schedule.locate(np.array([idx], dtype=np.int64))
        doc_id, split = int(doc_ids[0]), int(splits[0])
        config: SIPDatasetConfig = self.config
        prefix = self.documents.tokens(doc_id, max(0, split - config.max_prefix_len), split)
        suffix = self.documents.tokens(doc_id, split, split + config.suffix_len)
        stored = self.rewrites.get(doc_id, split) if self.rewrites is not None else None
        return {"doc_id": doc_id, "split": split, "prefix": prefix, "suffix": suffix,
                "has_rewrite": stored is not None,
                "rewrite": stored.tokens if stored is not None else np.zeros(0, dtype=np.int64),
                "judgments": stored.judgments if stored is not None else {}}

    def _open_rewrites(self, dataset_path: Optional[str],
                       config: SIPDatasetConfig) -> Optional[RewriteStoreReader]:
        if dataset_path is None or not config.use_rewrites:
            return None
        store = store_dir_for(dataset_path, config.rewrite_store)
        reader = RewriteStoreReader.open(store)
        if reader is not None:
            check_meta(store, reader.meta, num_docs=self.documents.num_docs, suffix_len=config.suffix_len,
                       tokenizer=config.tokenizer, digest=index_digest(dataset_path))
        return reader


def too_short_error(dataset_path: Optional[str], documents: DocumentSource,
                    config: SIPDatasetConfig) -> ConfigError:
    """The error for a dataset none of whose documents fits min_prefix_len + N."""
    longest = int(documents.text_lengths.max()) if documents.num_docs else 0
    return ConfigError("sip.suffix_len", f"{config.suffix_len} is too long for {dataset_path}: no "
                       f"document has data.min_prefix_len + sip.suffix_len = "
                       f"{config.min_prefix_len + config.suffix_len} tokens (the longest has "
                       f"{longest}); lower sip.suffix_len or data.min_prefix_len")
