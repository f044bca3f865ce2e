"""OpenAI request validation and response bodies for `megatron-sip serve`.

Accepted fields (the subset trtllm-serve and vllm serve share that the judges use): model, prompt
(a string or a list of strings; completions) or messages (chat), n, temperature, top_p,
max_tokens (or max_completion_tokens), logprobs (completions: an int = alternatives per token;
chat: a bool, with top_logprobs), seed, stop (a string or a list). `stream: true` is refused.
Other fields are ignored. Invalid values raise `RequestError`, answered as HTTP 400; each request
is validated on its own, so a bad one never reaches the batch that serves the others.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from megatron_sip.generation import Choice, GenerationRequest
from megatron_sip.serve.generator import LocalOutput

MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_STOP = 4
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit seed; OpenAI's is a signed int64
DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (flags of `megatron-sip serve`)."""

    max_tokens: int = 4096
    """Largest max_tokens a request may ask; above it: HTTP 400."""
    max_prompts: int = 64
    """Most prompts in one completions request; above it: HTTP 400."""


class RequestError(ValueError):
    def __init__(self, param: Optional[str], message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status

    def body(self) -> Dict[str, Any]:
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                429: "rate_limit_error", 503: "server_error", 504: "timeout_error"}.get(self.status, "server_error")
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.status}}


@dataclass(frozen=True)
class ParsedRequest:
    prompts: Tuple[str, ...]
    """Texts to continue; for chat, one conversation as it will be templated."""
    messages: Optional[Tuple[Dict[str, str], ...]]
    params: GenerationRequest
    """Sampling parameters; its `prompt` is unused."""


def parse(body: Any, *, chat: bool, served_model: str, limits: Limits = Limits()) -> ParsedRequest:
    if not isinstance(body, dict):
        raise RequestError(None, "the body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served_model:
        raise RequestError("model", f"model '{model}' is not served here (serving '{served_model}')", status=404)
    if body.get("stream"):
        raise RequestError("stream", "streaming is not supported; send stream=false")
    params = GenerationRequest(
        prompt="",
        n=_int(body, "n", 1, low=1, high=MAX_N),
        temperature=_number(body, "temperature", 1.0, low=0.0, high=2.0),
        top_p=_number(body, "top_p", 1.0, low=1e-6, high=1.0),
        max_tokens=_int(body, "max_tokens", _int(body, "max_completion_tokens", min(DEFAULT_MAX_TOKENS, limits.max_tokens), low=1,
                                                 high=limits.max_tokens), low=1, high=limits.max_tokens),
        seed=_int(body, "seed", None, low=0, high=MAX_SEED),
        stop=_stop(body.get("stop")),
        top_logprobs=_top_logprobs(body, chat),
    )
    if chat:
        messages = _messages(body.get("messages"))
        return ParsedRequest(prompts=("",), messages=messages, params=params)
    prompts = _prompts(body.get("prompt"))
    if len(prompts) > limits.max_prompts:
        raise RequestError("prompt", f"{len(prompts)} prompts in one request; this server takes at most "
                           f"{limits.max_prompts} (--max-prompts-per-request)")
    return ParsedRequest(prompts=prompts, messages=None, params=params)


def completion_body(model: str, outputs: Sequence[LocalOutput], *, with_logprobs: bool) -> Dict[str, Any]:
    choices = []
    for p, output in enumerate(outputs):
        for s, choice in enumerate(output.generation.choices):
            choices.append({"index": p * len(output.generation.choices) + s, "text": choice.text,
                            "finish_reason": choice.finish_reason,
                            "logprobs": _completion_logprobs(choice) if with_logprobs else None})
    return _envelope("cmpl", "text_completion", model, choices, outputs)


def chat_body(model: str, output: LocalOutput, *, with_logprobs: bool) -> Dict[str, Any]:
    choices = [{"index": s, "message": {"role": "assistant", "content": choice.text},
                "finish_reason": choice.finish_reason,
                "logprobs": _chat_logprobs(choice) if with_logprobs else None}
               for s, choice in enumerate(output.generation.choices)]
    return _envelope("chatcmpl", "chat.completion", model, choices, [output])


def models_body(model: str) -> Dict[str, Any]:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": int(time.time()),
                                        "owned_by": "megatron-sip"}]}


def _envelope(prefix: str, kind: str, model: str, choices: List[Dict[str, Any]],
              outputs: Sequence[LocalOutput]) -> Dict[str, Any]:
    prompt_tokens = sum(o.prompt_tokens for o in outputs)
    completion_tokens = sum(o.completion_tokens for o in outputs)
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model,
            "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                          "total_tokens": prompt_tokens + completion_tokens}}


def _completion_logprobs(choice: Choice) -> Optional[Dict[str, Any]]:
    if choice.logprobs is None:
        return None
    offsets, at = [], 0
    for entry in choice.logprobs:
        offsets.append(at)
        at += len(entry.token)
    return {"tokens": [e.token for e in choice.logprobs], "token_logprobs": [e.logprob for e in choice.logprobs],
            "top_logprobs": [dict(e.top) for e in choice.logprobs], "text_offset": offsets}


def _chat_logprobs(choice: Choice) -> Optional[Dict[str, Any]]:
    if choice.logprobs is None:
        return None
    return {"content": [{"token": e.token, "logprob": e.logprob,
                         "top_logprobs": [{"token": t, "logprob": v} for t, v in e.top.items()]}
                        for e in choice.logprobs]}


def _int(body: Dict[str, Any], key: str, default: Optional[int], *, low: Optional[int] = None,
         high: Optional[int] = None) -> Optional[int]:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(key, f"'{key}' must be an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(key, f"'{key}'={value} is outside [{low}, {high}]")
    return value


def _number(body: Dict[str, Any], key: str, default: float, *, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RequestError(key, f"'{key}' must be a number")
    if not low <= value <= high:
        raise RequestError(key, f"'{key}'={value} is outside [{low}, {high}]")
    return float(value)


def _stop(value: Any) -> Tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP:
        raise RequestError("stop", f"'stop' must be a string or a list of at most {MAX_STOP} strings")
    return tuple(s for s in stops if s)


def _top_logprobs(body: Dict[str, Any], chat: bool) -> int:
    if chat:
        wanted = body.get("logprobs")
        if wanted is None or wanted is False:
            return 0
        if wanted is not True:
            raise RequestError("logprobs", "'logprobs' must be a boolean on the chat api")
        return max(1, _int(body, "top_logprobs", 0, low=0, high=MAX_TOP_LOGPROBS))
    value = _int(body, "logprobs", None, low=0, high=MAX_TOP_LOGPROBS)
    return 0 if value is None else max(1, value)


def _messages(value: Any) -> Tuple[Dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise RequestError("messages", "'messages' must be a non-empty list")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise RequestError("messages", f"messages[{i}] needs a role (system/user/assistant) and a string content")
        messages.append({"role": message["role"], "content": message["content"]})
    return tuple(messages)


def _prompts(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        return tuple(value)
    raise RequestError("prompt", "'prompt' must be a string or a non-empty list of strings")
