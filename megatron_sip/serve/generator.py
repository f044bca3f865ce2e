"""Batched generation with a local Hugging Face causal LM (the embedded SmolLM2 or any local
model), shared by `megatron-sip serve` and the in-process `embedded` backend.

Requests are expanded into rows (n rows per request), grouped by sampling parameters (one
`generate` call applies one temperature / top-p / seed), left-padded and generated together.
Each row is then cut at its end-of-sequence token, its own `max_tokens` and its first stop string.
Log-probs come from the raw logits (before temperature and top-p), as OpenAI servers report them.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from megatron_sip.embedded import EMBEDDED_NAME, load_causal_lm
from megatron_sip.generation import Choice, Generation, GenerationRequest, TokenLogprobs
from megatron_sip.serve.prefix_reuse import PrefixCache, SampleParams, SharedPrefixDecoder


@dataclass(frozen=True)
class LocalRequest:
    request: GenerationRequest
    add_special_tokens: bool = False
    """True for raw completions prompts; chat-templated prompts already carry their specials."""
    deadline: Optional[float] = None
    """time.monotonic() by which its generation must end (cut, finish_reason "length"); None = none."""


@dataclass(frozen=True)
class LocalOutput:
    generation: Generation
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class _Row:
    request_index: int
    sample_index: int


def served_name(spec: str) -> str:
    return EMBEDDED_NAME if spec == EMBEDDED_NAME else Path(spec).expanduser().resolve().name


DEFAULT_PREFIX_CACHE_TOKENS = 8192
"""Tokens of prompt prefixes whose KV caches are kept across batches (about 370 MB for SmolLM2-135M
in fp32); 0 = no reuse (every prompt computed from scratch by HF `generate`)."""


class LocalGenerator:
    def __init__(self, spec: str, *, max_batch_size: int = 8,
                 prefix_cache_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS) -> None:
        self.model, self.tokenizer = load_causal_lm(spec)
        self.name = served_name(spec)
        self.max_batch_size = max_batch_size
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._eos_ids = self._end_ids()
        self._decoder: Optional[SharedPrefixDecoder] = None
        self._reuse = False
        self.set_prefix_cache_tokens(prefix_cache_tokens)

    def set_prefix_cache_tokens(self, tokens: int) -> None:
        """Prompt-prefix reuse with a cache of `tokens` tokens, or off (0). A cache of the same size
        is kept across off and on."""
        if tokens > 0 and (self._decoder is None or self._decoder.cache.max_tokens != tokens):
            self._decoder = SharedPrefixDecoder(self.model, pad_id=self.tokenizer.pad_token_id,
                                                eos_ids=self._eos_ids, cache=PrefixCache(tokens))
        self._reuse = tokens > 0

    @property
    def prefix_cache(self) -> Optional[PrefixCache]:
        return self._decoder.cache if self._reuse else None

    def chat_prompt(self, messages: Sequence[Dict[str, str]]) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def run(self, requests: Sequence[LocalRequest]) -> List[LocalOutput]:
        """One output per request (blocking; call from a worker thread)."""
        rows = [_Row(i, s) for i, r in enumerate(requests) for s in range(r.request.n)]
        choices: Dict[_Row, Choice] = {}
        prompt_tokens: Dict[int, int] = {}
        completion_tokens: Dict[int, int] = {}
        by_params = itertools.groupby(sorted(rows, key=lambda r: self._params(requests[r.request_index])),
                                      key=lambda r: self._params(requests[r.request_index]))
        for _, group in by_params:
            group = list(group)
            for start in range(0, len(group), self.max_batch_size):
                chunk = group[start:start + self.max_batch_size]
                for row, (choice, n_prompt, n_new) in zip(chunk, self._generate(chunk, requests)):
                    choices[row] = choice
                    prompt_tokens[row.request_index] = n_prompt
                    completion_tokens[row.request_index] = completion_tokens.get(row.request_index, 0) + n_new
        return [LocalOutput(Generation(tuple(choices[_Row(i, s)] for s in range(r.request.n))),
                            prompt_tokens.get(i, 0), completion_tokens.get(i, 0))
                for i, r in enumerate(requests)]

    @staticmethod
    def _params(local: LocalRequest) -> Tuple:
        r = local.request
        seed = -1 if r.seed is None else r.seed
        return (r.temperature == 0.0, r.temperature, r.top_p, seed, local.add_special_tokens, r.top_logprobs > 0)

    def _generate(self, chunk: List[_Row], requests: Sequence[LocalRequest]):
        if self._reuse:
            yield from self._generate_shared(chunk, requests)
            return
        first = requests[chunk[0].request_index]
        params = first.request
        encoded = self.tokenizer([requests[r.request_index].request.prompt for r in chunk], return_tensors="pt",
                                 padding=True, add_special_tokens=first.add_special_tokens)
        max_new = max(requests[r.request_index].request.max_tokens for r in chunk)
        want_logprobs = any(requests[r.request_index].request.top_logprobs > 0 for r in chunk)
        config = self._generation_config(params, max_new, want_logprobs,
                                         _time_left([requests[r.request_index].deadline for r in chunk]))
        if params.seed is not None:
            torch.manual_seed(params.seed)
        with torch.no_grad():
            out = self.model.generate(**encoded, generation_config=config)
        prompt_len = encoded["input_ids"].shape[1]
        prompt_counts = encoded["attention_mask"].sum(1).tolist()
        for b, row in enumerate(chunk):
            request = requests[row.request_index].request
            new_ids = out.sequences[b, prompt_len:].tolist()
            logits = [step[b] for step in out.logits] if want_logprobs else None
            choice, n_new = self._choice(new_ids, request, logits)
            yield choice, int(prompt_counts[b]), n_new

    def _generate_shared(self, chunk: List[_Row], requests: Sequence[LocalRequest]):
        """The same rows through the shared-prefix decoder (prefix_reuse.py)."""
        first = requests[chunk[0].request_index]
        params = first.request
        prompts = self.tokenizer([requests[r.request_index].request.prompt for r in chunk],
                                 add_special_tokens=first.add_special_tokens)["input_ids"]
        outputs = self._decoder.generate(
            prompts, [requests[r.request_index].request.max_tokens for r in chunk],
            SampleParams(params.temperature, params.top_p, params.seed),
            want_logits=any(requests[r.request_index].request.top_logprobs > 0 for r in chunk),
            deadline=_batch_deadline([requests[r.request_index].deadline for r in chunk]))
        for row, ids, (new_ids, logits) in zip(chunk, prompts, outputs):
            choice, n_new = self._choice(new_ids, requests[row.request_index].request, logits)
            yield choice, len(ids), n_new

    def _generation_config(self, params: GenerationRequest, max_new: int, want_logprobs: bool,
                           max_time_s: Optional[float]):
        from transformers import GenerationConfig

        sample = params.temperature > 0.0
        return GenerationConfig(
            max_new_tokens=max_new, do_sample=sample, max_time=max_time_s,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None, top_k=0 if sample else None,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self._eos_ids),
            return_dict_in_generate=True, output_logits=want_logprobs)

    def _choice(self, new_ids: List[int], request: GenerationRequest,
                logits: Optional[List[torch.Tensor]]) -> Tuple[Choice, int]:
        finish = "length"
        kept: List[int] = []
        for token in new_ids[: request.max_tokens]:
            if token in self._eos_ids:
                finish = "stop"
                break
            kept.append(token)
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = min((text.find(s) for s in request.stop if s and s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        logprobs = self._logprobs(kept, logits, request.top_logprobs, len(text)) if logits is not None else None
        return Choice(text=text, finish_reason=finish, logprobs=logprobs), len(kept)

    def _logprobs(self, kept: List[int], logits: List[torch.Tensor], top_k: int,
                  text_chars: int) -> Tuple[TokenLogprobs, ...]:
        entries, produced = [], 0
        for position, token in enumerate(kept):
            if produced >= text_chars:
                break  # the text was cut at a stop string
            logprobs_V = torch.log_softmax(logits[position].float(), dim=-1)
            piece = self.tokenizer.decode([token])
            produced += len(piece)
            top = {}
            if top_k > 0:
                values, ids = torch.topk(logprobs_V, top_k)
                top = {self.tokenizer.decode([i]): float(v) for v, i in zip(values.tolist(), ids.tolist())}
            entries.append(TokenLogprobs(token=piece, logprob=float(logprobs_V[token]), top=top))
        return tuple(entries)

    def _end_ids(self) -> set:
        ids = set()
        configured = self.model.generation_config.eos_token_id
        for value in (configured if isinstance(configured, (list, tuple)) else [configured]):
            if value is not None:
                ids.add(int(value))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids


def _batch_deadline(deadlines: Sequence[Optional[float]]) -> Optional[float]:
    """When the batch must stop: the latest deadline of its rows (a row whose own deadline passed
    earlier was already answered with a timeout); None when a row has none."""
    if not deadlines or any(d is None for d in deadlines):
        return None
    return max(deadlines)


def _time_left(deadlines: Sequence[Optional[float]]) -> Optional[float]:
    """Seconds until `_batch_deadline` (at least 10 ms: HF `generate`'s max_time must be positive)."""
    deadline = _batch_deadline(deadlines)
    return None if deadline is None else max(0.01, deadline - time.monotonic())
