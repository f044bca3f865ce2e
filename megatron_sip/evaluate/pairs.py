"""Held-out preference accuracy (`evaluate --pairs FILE`): how often a model gives the preferred
of two continuations of a prefix the higher likelihood.

FILE holds one JSON object a line: {"prefix": str, "chosen": str, "rejected": str}, e.g. a
held-out unsafe passage's own continuation (rejected) and its safe rewrite (chosen). Texts are
tokenized with the run's tokenizer; the prefix keeps its last `data.max_prefix_len` tokens and
each continuation its first `sip.suffix_len`. A pair counts 1 when the chosen continuation has
the higher mean log-probability per token, 0 when the rejected one has, 0.5 on an exact tie.

This measures what DPO optimizes, on prefixes the model never trained on. It does not depend on
decoding, so it still separates models whose generations are too poor to judge (a tiny model's
samples are rarely on topic, let alone unsafe).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from megatron_sip.data.codec import TextCodec
from megatron_sip.errors import InputError

FIELDS = ("prefix", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePairs:
    prefixes: Tuple[np.ndarray, ...]
    chosen: Tuple[np.ndarray, ...]
    rejected: Tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.prefixes)


@dataclass(frozen=True)
class PairScores:
    """One model's summed log-likelihoods (as -log p sums) and token counts on every pair."""

    chosen_nll: Tuple[float, ...]
    chosen_tokens: Tuple[int, ...]
    rejected_nll: Tuple[float, ...]
    rejected_tokens: Tuple[int, ...]

    def outcomes(self) -> List[float]:
        """Per pair: 1 when chosen has the lower NLL per token, 0 when higher, 0.5 on a tie."""
        result = []
        for cs, cn, rs, rn in zip(self.chosen_nll, self.chosen_tokens, self.rejected_nll, self.rejected_tokens):
            chosen, rejected = cs / cn, rs / rn
            result.append(1.0 if chosen < rejected else 0.0 if chosen > rejected else 0.5)
        return result

    def mean_margin(self) -> float:
        """Mean over pairs of log p(chosen) - log p(rejected), per token."""
        margins = [rs / rn - cs / cn for cs, cn, rs, rn in
                   zip(self.chosen_nll, self.chosen_tokens, self.rejected_nll, self.rejected_tokens)]
        return sum(margins) / len(margins)


def load_pairs(path: str, codec: TextCodec, *, max_prefix_len: int, suffix_len: int) -> PreferencePairs:
    """Read and tokenize FILE; a bad line is an InputError naming FILE:line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"--pairs: {file} not found")
    prefixes: List[str] = []
    chosen: List[str] = []
    rejected: List[str] = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{file}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in FIELDS):
            raise InputError(f"{file}:{number}: needs string fields {', '.join(FIELDS)}")
        prefixes.append(record["prefix"])
        chosen.append(record["chosen"])
        rejected.append(record["rejected"])
    if not prefixes:
        raise InputError(f"{file}: holds no pair")
    tokens = [codec.encode_batch(texts) for texts in (prefixes, chosen, rejected)]
    for number, (p, c, r) in enumerate(zip(*tokens), start=1):
        if not p or not c or not r:
            raise InputError(f"{file}: pair {number} has an empty prefix or continuation after tokenization")
    return PreferencePairs(prefixes=_arrays(tokens[0], keep_last=max_prefix_len),
                           chosen=_arrays(tokens[1], keep_first=suffix_len),
                           rejected=_arrays(tokens[2], keep_first=suffix_len))


def _arrays(token_lists: Sequence[List[int]], *, keep_first: int = 0, keep_last: int = 0) -> Tuple[np.ndarray, ...]:
    cut = [t[-keep_last:] if keep_last else t[:keep_first] for t in token_lists]
    return tuple(np.asarray(t, dtype=np.int64) for t in cut)
