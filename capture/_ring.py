"""A bounded pool of reused host buffers (pinned when the model runs on CUDA).

Buffers are raw uint8 tensors; a caller takes one with ``acquire(nbytes)``, views it as the dtype and shape it
needs, and gives it back with ``release`` (typically from the store writer's ``done`` callback, on the writer's
thread). Reuse avoids paying for page faults (CPU) or ``cudaHostAlloc`` (GPU) on every batch. When the pool is
exhausted, ``acquire`` applies backpressure: it calls ``drain`` (the recorder hands finished copies to the writer)
and waits for a release, and it says so once through ``warnings.warn``.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable

import torch

__all__ = ["BufferPool"]

_ALIGN = 1 << 20  # round large requests up to 1 MiB so buffers fit the next batch's slightly different sizes


class BufferPool:
    """Up to ``capacity_bytes`` of reusable host buffers; ``pin=True`` allocates page-locked memory."""

    def __init__(self, capacity_bytes: int, *, pin: bool = False) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"capacity_bytes must be >= 1, got {capacity_bytes}")
        self.capacity_bytes, self.pin = capacity_bytes, pin
        self._free: list[torch.Tensor] = []
        self._allocated = 0
        self._cv = threading.Condition()
        self.waits = 0
        """How many times ``acquire`` had to wait for a buffer (backpressure events)."""
        self._warned = False

    @property
    def allocated_bytes(self) -> int:
        return self._allocated

    def _new(self, nbytes: int) -> torch.Tensor:
        size = nbytes if nbytes < _ALIGN else -(-nbytes // _ALIGN) * _ALIGN
        self._allocated += size
        return torch.empty(size, dtype=torch.uint8, pin_memory=self.pin)

    def acquire(self, nbytes: int, drain: Callable[[], bool] | None = None,
                timeout: float | None = 600.0) -> torch.Tensor:
        """A free buffer of at least ``nbytes`` bytes; waits (draining via ``drain``) when the pool is full.

        Raises ``TimeoutError`` when no buffer comes back within ``timeout`` seconds (a stalled writer).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cv:
                fits = [i for i, b in enumerate(self._free) if b.numel() >= nbytes]
                if fits:
                    return self._free.pop(min(fits, key=lambda i: self._free[i].numel()))
                if self._allocated + nbytes <= self.capacity_bytes or self._allocated == 0:
                    return self._new(nbytes)
                if self._free:  # room is held by buffers too small for this request: drop the smallest
                    small = min(range(len(self._free)), key=lambda i: self._free[i].numel())
                    self._allocated -= self._free.pop(small).numel()
                    continue
            self.waits += 1
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no capture buffer of {nbytes} bytes came back within {timeout} s "
                                   f"({self._allocated} of {self.capacity_bytes} bytes in flight)")
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"capture buffer pool full ({self._allocated / 2**20:.0f} MiB in flight): the model now waits "
                    "for the store writer (backpressure); raise RecorderConfig.buffer_bytes or write faster",
                    RuntimeWarning, stacklevel=3)
            if drain is not None and drain():
                continue
            with self._cv:
                if not self._free:
                    self._cv.wait(timeout=0.05)

    def reserve(self, nbytes: int, count: int) -> None:
        """Allocate ``count`` buffers of ``nbytes`` up front (as far as the capacity allows)."""
        with self._cv:
            for _ in range(count):
                if self._allocated + nbytes > self.capacity_bytes:
                    break
                self._free.append(self._new(nbytes))

    def release(self, buf: torch.Tensor) -> None:
        """Return a buffer (thread-safe; called from the writer thread)."""
        with self._cv:
            self._free.append(buf)
            self._cv.notify_all()
