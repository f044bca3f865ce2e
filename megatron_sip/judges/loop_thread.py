"""An asyncio event loop on a daemon thread, so synchronous code (the trainer, a CLI) can use the
async judge and rewriter, keep their HTTP sessions alive between calls, and overlap judging with
training by holding a `concurrent.futures.Future`; `LoopFacade` is the synchronous face of one
async object on such a loop (`JudgeService`, `Rewriter`, the evaluation's `EvalJudge`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Optional, TypeVar

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


F = TypeVar("F", bound="LoopFacade")


class LoopFacade:
    """Owns an async object (anything with `aclose()`) and the loop thread it lives on. Subclasses
    open it with `_opened(opening_coroutine, **their_own_arguments)`, call it through
    `self._loop`, and are context managers that close both."""

    loop_name = "sip-loop"

    def __init__(self, inner: Any, loop: LoopThread) -> None:
        self._inner = inner
        self._loop = loop

    @classmethod
    def _opened(cls: "type[F]", opening: Awaitable[Any], **extra: Any) -> F:
        loop = LoopThread(name=cls.loop_name)
        try:
            inner = loop.run(opening)
        except BaseException:
            loop.close()
            raise
        return cls(inner, loop, **extra)

    def close(self) -> None:
        try:
            self._loop.run(self._inner.aclose())
        finally:
            self._loop.close()

    def __enter__(self: F) -> F:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
