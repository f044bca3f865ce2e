"""OpenAI-compatible request bodies and response parsing (the fields trtllm-serve and vllm serve
both accept), with the schema checks that turn a malformed answer into a `SchemaError`."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from megatron_sip.judges.generation import Choice, Generation, GenerationRequest, TokenLogprobs

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"
HEALTH_PATH = "/health"


class SchemaError(ValueError):
    """A server answered 200 with a body that is not a valid OpenAI-style response."""


def normalize_base_url(url: str) -> str:
    """`http://h:8000/v1/` -> `http://h:8000` (both servers serve /health at the root)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def request_body(api: str, model: str, requests: Sequence[GenerationRequest],
                 *, with_logprobs: bool = True) -> Dict[str, Any]:
    """One request body for `requests` (several only for the completions api, same parameters)."""
    first = requests[0]
    body: Dict[str, Any] = {
        "model": model,
        "n": first.n,
        "temperature": first.temperature,
        "top_p": first.top_p,
        "max_tokens": first.max_tokens,
        "stream": False,
    }
    if first.seed is not None:
        body["seed"] = first.seed
    if first.stop:
        body["stop"] = list(first.stop)
    wants_logprobs = with_logprobs and first.top_logprobs > 0
    if api == "chat":
        assert len(requests) == 1, "the chat api takes one conversation per request"
        body["messages"] = [{"role": "user", "content": first.prompt}]
        if wants_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = first.top_logprobs
    else:
        body["prompt"] = first.prompt if len(requests) == 1 else [r.prompt for r in requests]
        if wants_logprobs:
            body["logprobs"] = first.top_logprobs
    return body


def batch_key(request: GenerationRequest) -> Tuple:
    """Requests with equal keys may share one completions request."""
    return (request.n, request.temperature, request.top_p, request.max_tokens, request.seed,
            request.stop, request.top_logprobs)


def parse_response(api: str, payload: Any, *, num_prompts: int, n: int) -> List[Generation]:
    """One Generation per prompt; choices are matched to prompts by `index // n`.

    A prompt may get fewer than `n` choices: servers that ignore `n` (trtllm-serve's harmony path
    for GPT-OSS answers one choice whatever `n` asks) are valid servers, and the client asks them
    for the missing votes. More than `n`, or none at all, is a wrong schema."""
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
        raise SchemaError("response has no 'choices' list")
    if not payload["choices"]:
        raise SchemaError("response has an empty 'choices' list")
    buckets: List[List[Tuple[int, Choice]]] = [[] for _ in range(num_prompts)]
    for position, raw in enumerate(payload["choices"]):
        if not isinstance(raw, dict):
            raise SchemaError(f"choice {position} is not an object")
        index = raw.get("index", position)
        if not isinstance(index, int) or not 0 <= index < num_prompts * n:
            raise SchemaError(f"choice index {index!r} out of range for {num_prompts} x n={n}")
        choice = _parse_chat_choice(raw) if api == "chat" else _parse_completion_choice(raw)
        buckets[index // n].append((index, choice))
    generations = []
    for prompt_index, bucket in enumerate(buckets):
        if len({i for i, _ in bucket}) != len(bucket):
            raise SchemaError(f"prompt {prompt_index} got two choices with the same index")
        generations.append(Generation(choices=tuple(c for _, c in sorted(bucket, key=lambda x: x[0]))))
    return generations


def parse_model_ids(payload: Any) -> List[str]:
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise SchemaError("/v1/models answer has no 'data' list")
    ids = [m.get("id") for m in payload["data"] if isinstance(m, dict)]
    return [i for i in ids if isinstance(i, str)]


def _parse_chat_choice(raw: Dict[str, Any]) -> Choice:
    message = raw.get("message")
    if not isinstance(message, dict):
        raise SchemaError("chat choice has no 'message' object")
    content = message.get("content")
    if content is None:
        content = ""  # e.g. a reasoning model cut off by max_tokens before it answered
    if not isinstance(content, str):
        raise SchemaError("chat message 'content' is not a string")
    # vLLM and trtllm-serve's reasoning parsers put the analysis in `reasoning_content`; newer
    # vLLM releases call it `reasoning`.
    reasoning = message.get("reasoning_content", message.get("reasoning"))
    return Choice(text=content, finish_reason=raw.get("finish_reason"),
                  logprobs=_chat_logprobs(raw.get("logprobs")),
                  reasoning=reasoning if isinstance(reasoning, str) else None)


def _parse_completion_choice(raw: Dict[str, Any]) -> Choice:
    text = raw.get("text")
    if not isinstance(text, str):
        raise SchemaError("completion choice has no 'text' string")
    return Choice(text=text, finish_reason=raw.get("finish_reason"),
                  logprobs=_completion_logprobs(raw.get("logprobs")))


def _chat_logprobs(raw: Any) -> Optional[Tuple[TokenLogprobs, ...]]:
    """Chat format: {"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}.
    Logprobs are an optional extra: anything malformed is dropped, not an error."""
    if not isinstance(raw, dict) or not isinstance(raw.get("content"), list):
        return None
    tokens = []
    for entry in raw["content"]:
        if not isinstance(entry, dict) or not _is_number(entry.get("logprob")):
            return None
        top = {t["token"]: float(t["logprob"]) for t in entry.get("top_logprobs") or ()
               if isinstance(t, dict) and isinstance(t.get("token"), str) and _is_number(t.get("logprob"))}
        tokens.append(TokenLogprobs(token=str(entry.get("token", "")), logprob=float(entry["logprob"]), top=top))
    return tuple(tokens)


def _completion_logprobs(raw: Any) -> Optional[Tuple[TokenLogprobs, ...]]:
    """Completions format: {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{tok: lp}]}."""
    if not isinstance(raw, dict):
        return None
    tokens, values = raw.get("tokens"), raw.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        return None
    tops = raw.get("top_logprobs") or [{} for _ in tokens]
    if not isinstance(tops, list) or len(tops) != len(tokens):
        return None
    result = []
    for token, value, top in zip(tokens, values, tops):
        if not isinstance(token, str) or not _is_number(value):
            return None
        clean_top = {k: float(v) for k, v in (top or {}).items() if isinstance(k, str) and _is_number(v)} \
            if isinstance(top, dict) else {}
        result.append(TokenLogprobs(token=token, logprob=float(value), top=clean_top))
    return tuple(result)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
