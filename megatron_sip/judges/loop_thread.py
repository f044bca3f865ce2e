"""An asyncio event loop on a daemon thread, so synchronous code (the trainer, a CLI) can use the
async judge and rewriter, keep their HTTP sessions alive between calls, and overlap judging with
training by holding a `concurrent.futures.Future`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Awaitable, Optional, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "sip-judge-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread: Optional[threading.Thread] = threading.Thread(target=self._loop.run_forever,
                                                                    name=name, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Awaitable[T]) -> "concurrent.futures.Future[T]":
        if self._thread is None:
            raise RuntimeError("the loop thread is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def run(self, coroutine: Awaitable[T]) -> T:
        return self.submit(coroutine).result()

    def close(self) -> None:
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None
        self._loop.close()
