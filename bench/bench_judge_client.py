"""Throughput of the judge's HTTP client against servers of known capacity.

Each fake server (tests/fault_server.py, a separate process) answers after a fixed latency with at
most `capacity` requests in service at once, so its capacity is capacity / latency requests/s.
The client (megatron_sip.judges.client.OpenAIClient, as the judge uses it) sends `--requests`
chat requests through `generate`; we print requests/s and the ratio to the servers' total
capacity. Goal: >= 0.90.

    python bench/bench_judge_client.py [--latency-s 0.1] [--capacity 32] [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_sip.judges.client import OpenAIClient  # noqa: E402
from megatron_sip.judges.config import JudgeConfig  # noqa: E402
from megatron_sip.judges.generation import GenerationRequest  # noqa: E402
from tests.fault_server import FaultServer  # noqa: E402


async def measure(urls, *, concurrency: int, num_requests: int) -> tuple:
    cfg = JudgeConfig(endpoints=urls, max_concurrency_per_endpoint=concurrency, request_timeout_s=30,
                      health_timeout_s=30, batch_deadline_s=600)
    client = OpenAIClient(cfg)
    await client.start()
    try:
        warm = [GenerationRequest(prompt="warm-up", max_tokens=8)] * 64
        await client.generate(warm, deadline_s=60)
        requests = [GenerationRequest(prompt=f"judge this {i}", max_tokens=8) for i in range(num_requests)]
        start = time.perf_counter()
        results = await client.generate(requests, deadline_s=600)
        elapsed = time.perf_counter() - start
    finally:
        await client.aclose()
    return elapsed, sum(r is not None for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, default=0.1, help="server latency per request")
    parser.add_argument("--capacity", type=int, default=32, help="requests in service at once per server")
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    print(f"{'setup':<34}{'capacity/s':>11}{'client/s':>10}{'ratio':>8}{'answered':>10}")
    for num_servers in (1, 2):
        capacity = args.capacity // num_servers
        servers = [FaultServer(latency_s=args.latency_s, capacity=capacity).start() for _ in range(num_servers)]
        try:
            total_capacity = num_servers * capacity / args.latency_s
            elapsed, answered = asyncio.run(measure([s.url for s in servers], concurrency=2 * capacity,
                                                    num_requests=args.requests))
        finally:
            for server in servers:
                server.kill()
        rate = args.requests / elapsed
        setup = f"{num_servers} server(s) x {capacity} slots, {args.latency_s * 1000:.0f} ms"
        print(f"{setup:<34}{total_capacity:>11.0f}{rate:>10.0f}{rate / total_capacity:>8.3f}"
              f"{answered:>7}/{args.requests}")


if __name__ == "__main__":
    main()
