"""A FIFO between the caller and the writer thread, bounded by the bytes it holds (backpressure)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["ByteQueue"]


class ByteQueue:
    """A FIFO bounded by the bytes it holds (one oversized item is always admitted)."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._used = 0
        self._items: deque[tuple[Any, int]] = deque()
        self._cv = threading.Condition()

    def put(self, item: Any, nbytes: int, failed: Callable[[], BaseException | None]) -> None:
        with self._cv:
            while self._used and self._used + nbytes > self._cap:
                if failed() is not None:
                    return
                self._cv.wait(0.1)
            self._items.append((item, nbytes))
            self._used += nbytes
            self._cv.notify_all()

    def get(self, timeout: float | None) -> tuple[Any, int] | None:
        with self._cv:
            if not self._items:
                self._cv.wait(timeout)
            return self._items.popleft() if self._items else None

    def release(self, nbytes: int) -> None:
        with self._cv:
            self._used -= nbytes
            self._cv.notify_all()
