"""Coalesce concurrent generation requests into batches for one model on a worker thread.

`enqueue` (or `submit`) may be called from any event loop; the worker takes the first waiting
request, gathers whatever else is already queued (up to `max_batch_size` requests), runs them as
one batch and hands each result back to its caller's loop. Requests whose caller gave up
(cancelled future) are dropped before generation. The queue holds at most `max_queue` requests
(`BatcherFull` beyond: the server answers 429), and a batch that fails is run again request by
request, so one bad request fails only itself.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import List, Optional

from megatron_sip.serve.generator import LocalGenerator, LocalOutput, LocalRequest

logger = logging.getLogger(__name__)

_STOP = object()


class BatcherStopped(RuntimeError):
    """The generation loop has stopped; the request was not run."""


class BatcherFull(RuntimeError):
    """The queue is at `max_queue`; the request was not queued."""


@dataclass
class _Item:
    request: LocalRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class Batcher:
    def __init__(self, generator: LocalGenerator, *, max_batch_size: int = 8, max_queue: Optional[int] = None,
                 gather_wait_s: float = 0.002) -> None:
        self._generator = generator
        self._max_batch_size = max_batch_size
        self._max_queue = max_queue
        self._gather_wait_s = gather_wait_s
        self._queue: "queue.Queue" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self.num_batches = 0
        self.num_requests = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sip-generation", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the batch in progress, fail the queued requests, join the worker."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        self._thread = None

    async def submit(self, request: LocalRequest) -> LocalOutput:
        return await self.enqueue([request])[0]

    def enqueue(self, requests: List[LocalRequest]) -> List[asyncio.Future]:
        """Queue all of `requests` or none (BatcherFull); call from a running event loop.
        Cancelling a returned future drops its request if it has not started."""
        if self._thread is None:
            raise BatcherStopped("the generation loop is not running")
        if self._max_queue is not None and self._queue.qsize() + len(requests) > self._max_queue:
            raise BatcherFull(f"{self._queue.qsize()} requests are queued (--max-queue {self._max_queue})")
        loop = asyncio.get_running_loop()
        futures = []
        for request in requests:
            future = loop.create_future()
            self._queue.put(_Item(request, loop, future))
            futures.append(future)
        return futures

    def _loop(self) -> None:
        stopping = False
        try:
            while not stopping:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                stopping = self._gather(batch)
                self._run([item for item in batch if not item.future.cancelled()])
        finally:
            self._fail_queued()

    def _gather(self, batch: List[_Item]) -> bool:
        """Add queued requests to `batch`; True when a stop request was met."""
        while len(batch) < self._max_batch_size:
            try:
                item = self._queue.get(timeout=self._gather_wait_s)
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            batch.append(item)
        return False

    def _run(self, batch: List[_Item]) -> None:
        if not batch:
            return
        self.num_batches += 1
        self.num_requests += len(batch)
        try:
            outputs = self._generator.run([item.request for item in batch])
        except (RuntimeError, ValueError, TypeError, IndexError, OverflowError) as exc:  # bad input or torch
            if len(batch) > 1:
                logger.warning("generation failed for a batch of %d (%s); running its requests one by one",
                               len(batch), exc)
                for item in batch:
                    self._run_alone(item)
                return
            logger.error("generation failed: %s", exc)
            _resolve(batch[0], exc=exc)
            return
        for item, output in zip(batch, outputs):
            _resolve(item, result=output)

    def _run_alone(self, item: _Item) -> None:
        if item.future.cancelled():
            return
        try:
            [output] = self._generator.run([item.request])
        except (RuntimeError, ValueError, TypeError, IndexError, OverflowError) as exc:
            logger.error("generation failed: %s", exc)
            _resolve(item, exc=exc)
            return
        _resolve(item, result=output)

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                _resolve(item, exc=BatcherStopped("the server is shutting down"))


def _resolve(item: _Item, *, result: Optional[LocalOutput] = None, exc: Optional[BaseException] = None) -> None:
    def deliver() -> None:
        if item.future.done():
            return
        if exc is not None:
            item.future.set_exception(exc)
        else:
            item.future.set_result(result)

    try:
        item.loop.call_soon_threadsafe(deliver)
    except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
        pass
