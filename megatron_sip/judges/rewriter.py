"""The rewriter: a post-trained model rewrites the suffix of a prefix (PAPER.md, candidate 2).

It sees the prefix and the suffix with the last `rewriter.context_words` words of the prefix in
front, and must answer with a continuation of about the same length that keeps good text,
fixes false statements and turns unsafe text safe. The answer is cleaned (echoed context, a
preamble line, quotes and markers removed) and cut to the suffix's N tokens of the policy
tokenizer. An empty or missing answer is a failed rewrite: None, counted in `stats`.

Backends: openai / embedded (a model, through the same generators as the judge) and rules (a
programmatic stand-in for controlled experiments: the suffix with lexicon terms removed).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from megatron_sip.judges import prompts
from megatron_sip.judges.config import RewriterConfig
from megatron_sip.judges.generation import GenerationRequest, TextGenerator
from megatron_sip.judges.loop_thread import LoopFacade
from megatron_sip.judges.types import RewriteRequest

_FIELDS = ("prefix", "passage", "context", "num_words")
_PREAMBLE_MAX_WORDS = 12
_ECHO_MIN_WORDS = 5
"""A copied instruction line is recognised from this many words on (shorter ones could be text)."""
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


@dataclass
class RewriteStats:
    num_requests: int = 0
    num_failed: int = 0


def cut_to_token_ids(text: str, tokenizer, num_tokens: int) -> List[int]:
    """The first `num_tokens` token ids of `text` (no special tokens added)."""
    return list(tokenizer.encode(text, add_special_tokens=False)[:num_tokens])


def cut_to_tokens(text: str, tokenizer, num_tokens: int) -> str:
    """`text` cut to its first `num_tokens` tokens of `tokenizer`."""
    return tokenizer.decode(cut_to_token_ids(text, tokenizer, num_tokens), skip_special_tokens=True)


def context_tail(prefix: str, num_words: int) -> str:
    """The prefix's text from the start of its last `num_words` words, verbatim."""
    if num_words <= 0:
        return ""
    starts = [m.start() for m in re.finditer(r"\S+", prefix)]
    return prefix[starts[-num_words]:] if len(starts) >= num_words else prefix


def instruction_lines(template_text: str) -> Tuple[str, ...]:
    """The prompt's own lines without `$fields`, whitespace-normalised: what an answer must not
    copy (a small model sometimes repeats its instructions instead of rewriting)."""
    lines = (" ".join(line.split()) for line in template_text.splitlines() if "$" not in line)
    return tuple(line for line in lines if len(line.split()) >= _ECHO_MIN_WORDS)


def _copies_instruction(line: str, instructions: Sequence[str]) -> bool:
    """The line is an instruction line, whole or cut short (at least _ECHO_MIN_WORDS words)."""
    flat = " ".join(line.split()).lstrip("- ")
    return len(flat.split()) >= _ECHO_MIN_WORDS and any(i.lstrip("- ").startswith(flat) for i in instructions)


def clean_answer(answer: str, *, context: str, suffix: str, instructions: Sequence[str] = ()) -> Optional[str]:
    """The continuation in a rewriter's answer, or None when there is none. Lines copied from
    `instructions` (see instruction_lines) are dropped."""
    lines = [line for line in answer.strip().splitlines()
             if not line.lstrip().startswith("<<<") and not _copies_instruction(line, instructions)]
    if len(lines) > 1 and lines[0].rstrip().endswith(":") and len(lines[0].split()) <= _PREAMBLE_MAX_WORDS:
        lines = lines[1:]  # "Here is the rewritten passage:"
    text = "\n".join(lines).strip().strip(_QUOTES).strip()
    context_words = context.split()
    if context_words and text.split()[: len(context_words)] == context_words:
        text = text[_end_of_words(text, len(context_words)):]
    text = text.strip()
    if not text:
        return None
    leading = suffix[: len(suffix) - len(suffix.lstrip())]
    return (leading or "") + text


def _end_of_words(text: str, count: int) -> int:
    matches = list(re.finditer(r"\S+", text))
    return matches[count - 1].end()


def strip_lexicon_terms(text: str, lexicon: Sequence[Tuple[str, ...]]) -> str:
    for entry in lexicon:
        pattern = r"\b" + r"\W+".join(re.escape(word) for word in entry) + r"\b"
        text = re.sub(pattern, "", text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", text)


class AsyncRewriter:
    """Use `await AsyncRewriter.open(cfg, tokenizer=...)`; `tokenizer` (the policy's) cuts each
    rewrite to its request's N tokens; without one, answers are returned uncut."""

    def __init__(self, cfg: RewriterConfig, *, generator: Optional[TextGenerator], tokenizer=None,
                 lexicon: Optional[Sequence[Tuple[str, ...]]] = None) -> None:
        self._cfg = cfg
        self._generator = generator
        self._tokenizer = tokenizer
        self._lexicon = lexicon
        self._template = None
        if generator is not None:
            self._template = prompts.load_template("rewrite", required=_FIELDS, prompt_dir=cfg.prompt_dir,
                                                   key="rewriter.prompt_dir", needs_decision_line=False)
        self.stats = RewriteStats()

    @classmethod
    async def open(cls, cfg: RewriterConfig, *, tokenizer=None) -> "AsyncRewriter":
        if cfg.backend == "rules":
            from megatron_sip.judges.backends.rules import load_lexicon

            return cls(cfg, generator=None, tokenizer=tokenizer,
                       lexicon=load_lexicon(cfg.lexicon, key="rewriter.lexicon"))
        from megatron_sip.judges.build import open_generator

        prompts.load_template("rewrite", required=_FIELDS, prompt_dir=cfg.prompt_dir,
                              key="rewriter.prompt_dir", needs_decision_line=False)
        generator = await open_generator(cfg, backend=cfg.backend, section="rewriter")
        return cls(cfg, generator=generator, tokenizer=tokenizer)

    async def rewrite(self, requests: Sequence[RewriteRequest], *,
                      deadline_s: Optional[float] = None) -> List[Optional[str]]:
        if self._generator is None:
            kept = [strip_lexicon_terms(r.suffix, self._lexicon).rstrip() for r in requests]
            answers: List[Optional[str]] = [text if text.strip() else None for text in kept]
        else:
            answers = await self._generate(requests, deadline_s or self._cfg.batch_deadline_s)
        results = [self._finish(a, r) for a, r in zip(answers, requests)]
        self.stats.num_requests += len(requests)
        self.stats.num_failed += sum(r is None for r in results)
        return results

    async def _generate(self, requests: Sequence[RewriteRequest], deadline_s: float) -> List[Optional[str]]:
        generation_requests, contexts = [], []
        for request in requests:
            context = context_tail(request.prefix, self._cfg.context_words)
            nonce = prompts.nonce_for(request.prefix, request.suffix)
            prompt = self._template.render(
                prefix=prompts.block("START", request.prefix, nonce),
                passage=prompts.block("PASSAGE", context + request.suffix, nonce),
                context=prompts.block("LAST WORDS", " ".join(context.split()), nonce),
                num_words=str(max(1, len(request.suffix.split()))))
            budget = math.ceil(request.suffix_len_tokens * self._cfg.max_tokens_ratio) + self._cfg.max_tokens_extra
            generation_requests.append(GenerationRequest(prompt=prompt, temperature=self._cfg.temperature,
                                                         top_p=self._cfg.top_p, max_tokens=budget))
            contexts.append(context)
        generations = await self._generator.generate(generation_requests, deadline_s=deadline_s)
        instructions = instruction_lines(self._template.template.template)
        return [None if g is None else clean_answer(g.choices[0].text, context=c, suffix=r.suffix,
                                                    instructions=instructions)
                for g, c, r in zip(generations, contexts, requests)]

    def _finish(self, answer: Optional[str], request: RewriteRequest) -> Optional[str]:
        if answer is None:
            return None
        if self._tokenizer is not None:
            answer = cut_to_tokens(answer, self._tokenizer, request.suffix_len_tokens)
        return answer if answer.strip() else None

    async def aclose(self) -> None:
        if self._generator is not None:
            await self._generator.aclose()


class Rewriter(LoopFacade):
    """Synchronous rewriter for the `rewrite` job: `rewriter.rewrite_batch(requests)` or simply
    `rewriter(requests)` -> one rewrite text or None (failed) per request."""

    loop_name = "sip-rewriter-loop"

    @classmethod
    def open(cls, cfg: RewriterConfig, *, tokenizer=None) -> "Rewriter":
        return cls._opened(AsyncRewriter.open(cfg, tokenizer=tokenizer))

    @property
    def stats(self) -> RewriteStats:
        return self._inner.stats

    def rewrite_batch(self, requests: Sequence[RewriteRequest], *,
                      deadline_s: Optional[float] = None) -> List[Optional[str]]:
        return self._loop.run(self._inner.rewrite(list(requests), deadline_s=deadline_s))

    __call__ = rewrite_batch
