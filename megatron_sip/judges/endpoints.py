"""Endpoint pool: least-loaded balancing, bounded concurrency and a circuit breaker per endpoint.

Breaker: `circuit_failures` consecutive failures open it; while open the endpoint gets no
traffic; after `circuit_cooldown_s` it lets one trial request through (half-open), whose success
closes it and whose failure opens it again. An endpoint that failed its health check at start
begins open, so a server that comes up later is picked up by such a trial.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Deque, List, Optional

logger = logging.getLogger(__name__)


@dataclass
class Endpoint:
    url: str
    capacity: int
    in_flight: int = 0
    consecutive_failures: int = 0
    opened_at: Optional[float] = None
    """time.monotonic() when the breaker opened; None = closed."""
    trial_in_flight: bool = False
    logprobs_supported: bool = True
    """False once the server rejected a request for asking logprobs."""
    max_choices: Optional[int] = None
    """Most choices the server answered where more were asked (None = it honoured every `n`)."""
    num_requests: int = 0
    num_failures: int = 0
    order: int = field(default=0)

    @property
    def is_closed(self) -> bool:
        return self.opened_at is None


class EndpointPool:
    def __init__(self, urls: List[str], *, capacity: int, failure_threshold: int,
                 cooldown_s: float) -> None:
        self.endpoints = [Endpoint(url=u, capacity=capacity, order=i) for i, u in enumerate(urls)]
        self._failure_threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._waiters: Deque[asyncio.Future] = collections.deque()
        self._woken = 0
        """Waiters woken that have not yet tried to pick an endpoint."""
        self._tiebreak = itertools.count()

    def mark_down(self, endpoint: Endpoint) -> None:
        """Open the breaker now (an endpoint that failed its health check)."""
        endpoint.opened_at = time.monotonic()

    async def acquire(self, deadline: float) -> Optional[Endpoint]:
        """An endpoint with a free slot, or None if none frees up before `deadline` (monotonic).

        Waiters queue first in, first out, and a release wakes only as many as there are free
        slots, so thousands of queued requests do not all wake up for every answer."""
        loop = asyncio.get_running_loop()
        while True:
            endpoint, retry_in = self._pick(time.monotonic())
            if endpoint is not None:
                endpoint.in_flight += 1
                endpoint.num_requests += 1
                return endpoint
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait_s = remaining if retry_in is None else min(remaining, retry_in)
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout=max(wait_s, 1e-3))
            except asyncio.TimeoutError:
                pass
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._woken -= 1
                    self._wake()  # pass on the wake-up this waiter can no longer use
                raise
            if waiter.done() and not waiter.cancelled():
                self._woken -= 1
            else:
                waiter.cancel()

    def release(self, endpoint: Endpoint, *, ok: bool, counts_as_failure: bool = True) -> None:
        """Return the slot; `ok=False` with `counts_as_failure` feeds the breaker. Synchronous
        (all state lives on one event loop), so it is safe in a `finally` of a cancelled task."""
        endpoint.in_flight -= 1
        was_trial = endpoint.trial_in_flight
        endpoint.trial_in_flight = False
        if ok:
            if not endpoint.is_closed:
                logger.info("endpoint %s recovered", endpoint.url)
            endpoint.consecutive_failures = 0
            endpoint.opened_at = None
        elif counts_as_failure:
            endpoint.num_failures += 1
            endpoint.consecutive_failures += 1
            if was_trial or (endpoint.is_closed and endpoint.consecutive_failures >= self._failure_threshold):
                if endpoint.is_closed:
                    logger.warning("endpoint %s: circuit opened after %d consecutive failures",
                                   endpoint.url, endpoint.consecutive_failures)
                endpoint.opened_at = time.monotonic()
        self._wake()

    def _wake(self) -> None:
        """Wake as many waiters as there are free slots not already promised to a woken one."""
        free = sum(e.capacity - e.in_flight for e in self.endpoints if e.is_closed)
        free = max(free, 1)  # at least one, which may find a half-open endpoint's trial slot
        while self._waiters and self._woken < free:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._woken += 1

    def _pick(self, now: float):
        """(endpoint, None) when one can take a request, else (None, seconds until a breaker may
        let a trial through, or None when only a released slot can help)."""
        ready: List[Endpoint] = []
        retry_in: Optional[float] = None
        for endpoint in self.endpoints:
            if endpoint.in_flight >= endpoint.capacity:
                continue
            if endpoint.is_closed:
                ready.append(endpoint)
                continue
            wait = endpoint.opened_at + self._cooldown_s - now
            if wait <= 0 and not endpoint.trial_in_flight:
                endpoint.trial_in_flight = True  # half-open: this request is the trial
                return endpoint, None
            if wait > 0:
                retry_in = wait if retry_in is None else min(retry_in, wait)
        if not ready:
            return None, retry_in
        # Least loaded first; the rotating counter spreads ties instead of always picking the first.
        turn = next(self._tiebreak)
        best = min(ready, key=lambda e: (e.in_flight / e.capacity, (e.order - turn) % len(self.endpoints)))
        return best, None
