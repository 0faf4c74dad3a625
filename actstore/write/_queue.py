"""A FIFO between the caller and the writer thread, bounded by the bytes it holds (backpressure)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ByteQueue"]

T = TypeVar("T")


class ByteQueue(Generic[T]):
    """A FIFO bounded by the bytes it holds (one oversized item is always admitted).

    The consumer calls :meth:`release` with an item's bytes once it is done with the item, which is when a blocked
    producer may go on.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._used = 0
        self._items: deque[tuple[T, int]] = deque()
        self._cv = threading.Condition()

    def put(self, item: T, nbytes: int, failed: Callable[[], BaseException | None]) -> None:
        """Append ``item`` of ``nbytes``, waiting while the queue holds too much; give up (dropping the item) once
        ``failed()`` returns an error: a dead consumer never releases."""
        with self._cv:
            while self._used and self._used + nbytes > self._cap:
                if failed() is not None:
                    return
                self._cv.wait(0.1)
            self._items.append((item, nbytes))
            self._used += nbytes
            self._cv.notify_all()

    def get(self, timeout: float | None) -> tuple[T, int] | None:
        """The oldest item and its bytes, or None when none came within ``timeout`` seconds (None: wait for one)."""
        with self._cv:
            if not self._items:
                self._cv.wait(timeout)
            return self._items.popleft() if self._items else None

    def release(self, nbytes: int) -> None:
        """The consumer is done with an item of ``nbytes``."""
        with self._cv:
            self._used -= nbytes
            self._cv.notify_all()
