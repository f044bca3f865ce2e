"""Generation that computes shared prompt prefixes once (`megatron-sip serve --prefix-cache-tokens`).

Judge prompts of one group start with the same instructions and document prefix (judges/prompts),
so most of every prefill repeats work. Here, for one batch of rows with the same sampling
parameters:
1. rows are sorted by token ids and cut into clusters whose neighbours share at least
   `MIN_SHARED_TOKENS` leading tokens;
2. a cluster's common prefix is looked up in the `PrefixCache` (the longest cached start of it,
   across batches), the rest of the prefix is computed once at batch size 1 and cached;
3. the prefix KV cache is repeated for the cluster's rows, each row's own remainder is fed with
   padding between the prefix and the remainder (masked out; positions continue the prefix), and
   the rows decode together.
Log-probs come from the raw logits, as in the no-reuse path (generator.py, HF `generate`): greedy
tokens and log-probs agree with it (tests/test_serve_prefix.py). Sampled tokens come from our own
temperature / top-p sampling with a seeded generator, so they are reproducible but not the ones
HF `generate` would draw.
"""

from __future__ import annotations

import collections
import copy
import os
import time
from dataclasses import dataclass
from typing import List, Optional, OrderedDict, Sequence, Tuple

import torch

MIN_SHARED_TOKENS = 32
"""Rows sharing fewer leading tokens are not worth a cluster of their own prefix."""

# Legend: B rows of one cluster, T fed positions, V vocabulary.


@dataclass(frozen=True)
class SampleParams:
    temperature: float
    top_p: float
    seed: Optional[int]


class PrefixCache:
    """KV caches of prompt prefixes (batch size 1), least recently used first out once their
    tokens exceed `max_tokens`. `longest(ids)` returns a private copy cropped to the longest
    start of `ids` that some entry shares."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: "OrderedDict[Tuple[int, ...], object]" = collections.OrderedDict()
        self._tokens = 0
        self.hits_tokens = 0
        """Prefix tokens served from the cache (not computed again)."""

    def longest(self, ids: Sequence[int]) -> Tuple[int, Optional[object]]:
        wanted = tuple(ids)
        best_key, best_len = None, 0
        for key in self._entries:
            shared = len(os.path.commonprefix([key, wanted]))
            if shared > best_len:
                best_key, best_len = key, shared
        if best_key is None or best_len < MIN_SHARED_TOKENS:
            return 0, None
        self._entries.move_to_end(best_key)
        cache = copy.deepcopy(self._entries[best_key])
        surplus = cache.get_seq_length() - best_len
        if surplus > 0:
            cache.crop(-surplus)  # transformers 5: a negative count of tokens to drop from the end
        self.hits_tokens += best_len
        return best_len, cache

    def put(self, ids: Sequence[int], cache: object) -> None:
        key = tuple(ids)
        if not MIN_SHARED_TOKENS <= len(key) <= self.max_tokens or key in self._entries:
            return
        self._entries[key] = copy.deepcopy(cache)
        self._tokens += len(key)
        while self._tokens > self.max_tokens:
            old, _ = self._entries.popitem(last=False)
            self._tokens -= len(old)


def clusters(prompts: Sequence[Sequence[int]]) -> List[List[int]]:
    """Row indices grouped for one shared prefix each. In sorted order, neighbours sharing fewer
    than MIN_SHARED_TOKENS leading tokens part; then a cluster is split where its neighbours share
    less than half of what its closest neighbours share: prompts about two groups in one batch
    share the instructions only, and computing each group's document prefix once beats computing
    the instructions once (they come from the prefix cache anyway)."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    shared = [len(os.path.commonprefix([prompts[a], prompts[b]])) for a, b in zip(order, order[1:])]
    groups: List[List[int]] = []
    start = 0
    for cut in [k + 1 for k, n in enumerate(shared) if n < MIN_SHARED_TOKENS] + [len(order)]:
        groups += _split(order[start:cut], shared[start:cut - 1])
        start = cut
    return groups


def _split(rows: List[int], shared: List[int]) -> List[List[int]]:
    """`rows` (sorted) with `shared[k]` = leading tokens rows k and k+1 share."""
    if not shared or min(shared) * 2 >= max(shared):
        return [rows]
    cut = shared.index(min(shared)) + 1
    return _split(rows[:cut], shared[:cut - 1]) + _split(rows[cut:], shared[cut:])


class SharedPrefixDecoder:
    def __init__(self, model, *, pad_id: int, eos_ids: set, cache: PrefixCache) -> None:
        self.model = model
        self.pad_id = pad_id
        self.eos_ids = eos_ids
        self.cache = cache

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], max_new: Sequence[int], params: SampleParams,
                 *, want_logits: bool, deadline: Optional[float]) -> List[Tuple[List[int], Optional[List[torch.Tensor]]]]:
        """(new token ids, raw logits per new token or None) per prompt."""
        results: List = [None] * len(prompts)
        generator = None
        if params.temperature > 0.0:
            generator = torch.Generator().manual_seed(params.seed if params.seed is not None else
                                                      int(torch.randint(0, 2**62, ()).item()))
        for rows in clusters(prompts):
            outputs = self._cluster([prompts[i] for i in rows], [max_new[i] for i in rows], params, generator,
                                    want_logits, deadline)
            for i, output in zip(rows, outputs):
                results[i] = output
        return results

    def _cluster(self, prompts, max_new, params, generator, want_logits, deadline):
        # At least one token of each row is fed after the prefix: it yields that row's first logits.
        common = min(len(os.path.commonprefix(list(prompts))), min(len(p) for p in prompts) - 1)
        cache = self._prefix_cache(prompts[0][:common])
        num_rows = len(prompts)
        cache.batch_repeat_interleave(num_rows)
        rests = [list(p[common:]) for p in prompts]
        width = max(len(r) for r in rests)
        ids_BT = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rests])
        mask_BT = torch.tensor([[1] * common + [0] * (width - len(r)) + [1] * len(r) for r in rests])
        # Padding sits between the prefix and the row's rest; positions continue the prefix.
        positions_BT = torch.tensor([[common] * (width - len(r)) + list(range(common, common + len(r))) for r in rests])
        logits_BV = self._forward(ids_BT, mask_BT, positions_BT, cache)
        new_ids: List[List[int]] = [[] for _ in range(num_rows)]
        logits: List[List[torch.Tensor]] = [[] for _ in range(num_rows)]
        done = [False] * num_rows
        next_position_B = positions_BT[:, -1] + 1
        for step in range(max(max_new)):
            tokens_B = self._sample(logits_BV, params, generator)
            for b, token in enumerate(tokens_B.tolist()):
                if done[b]:
                    continue
                new_ids[b].append(token)
                if want_logits:
                    logits[b].append(logits_BV[b])
                done[b] = token in self.eos_ids or len(new_ids[b]) >= max_new[b]
            if all(done) or (deadline is not None and time.monotonic() > deadline):
                break
            mask_BT = torch.cat([mask_BT, torch.ones(num_rows, 1, dtype=mask_BT.dtype)], dim=1)
            logits_BV = self._forward(tokens_B[:, None], mask_BT, next_position_B[:, None], cache)
            next_position_B = next_position_B + 1
        return [(ids, logits[b] if want_logits else None) for b, ids in enumerate(new_ids)]

    def _prefix_cache(self, prefix: Sequence[int]):
        from transformers import DynamicCache

        cached, cache = self.cache.longest(prefix)
        if cache is None:
            cache = DynamicCache()
        if cached < len(prefix):
            rest = torch.tensor([list(prefix[cached:])])
            positions = torch.arange(cached, len(prefix))[None]
            self._forward(rest, torch.ones(1, len(prefix), dtype=torch.long), positions, cache)
            self.cache.put(prefix, cache)
        return cache

    def _forward(self, ids_BT, mask_BT, positions_BT, cache) -> torch.Tensor:
        out = self.model(input_ids=ids_BT, attention_mask=mask_BT, position_ids=positions_BT,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    @staticmethod
    def _sample(logits_BV: torch.Tensor, params: SampleParams, generator) -> torch.Tensor:
        if params.temperature <= 0.0:
            return logits_BV.argmax(dim=-1)
        probs_BV = torch.softmax(logits_BV / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
            # Keep the smallest set whose mass reaches top_p (the top token always stays).
            outside_BV = sorted_BV.cumsum(dim=-1) - sorted_BV > params.top_p
            sorted_BV = sorted_BV.masked_fill(outside_BV, 0.0)
            probs_BV = torch.zeros_like(probs_BV).scatter(-1, order_BV, sorted_BV)
        return torch.multinomial(probs_BV, 1, generator=generator)[:, 0]
