"""Progress reporting without a dependency: library code asks a factory for a bar and updates it;
the CLI passes tqdm, tests and library callers the silent default."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterator, Protocol


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> Any:
        """Advance by `n` items."""


ProgressFactory = Callable[..., ContextManager[ProgressBar]]
"""Called as factory(desc=..., total=...), e.g. functools.partial(tqdm, file=sys.stderr)."""


class _Silent:
    def update(self, n: int = 1) -> None:
        return None


@contextlib.contextmanager
def no_progress(**_: Any) -> Iterator[ProgressBar]:
    yield _Silent()
