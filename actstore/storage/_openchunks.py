"""Chunk files kept open for small reads: a process-wide LRU of the file descriptor and parsed index of chunk files
that no longer change (a full chunk whose rows are all committed), read with ``pread`` while holding the GIL.

Why: a single-row read is a few microseconds of work, but each system call that releases the GIL (``open``,
``fstat``, ``pread``, ``close``) may wait for a busy Python thread's switch interval (5 ms) to get it back. Once a
chunk file is open and its index parsed, a block is one ``pread`` from the page cache, made through
``ctypes.PyDLL`` (which, unlike ``CDLL`` and ``os.pread``, keeps the GIL).

A file renamed over a cached one (only a rollback below a flushed commit rewrites a full chunk) keeps being read
from the old inode until its entry is dropped; the reader's block sums catch that, and its re-read goes around
this cache and drops the entry.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["OPEN_CHUNKS", "OpenChunks", "pread_holding_gil"]

_LIBC = ctypes.PyDLL(None, use_errno=True)
_PREAD = _LIBC.pread
_PREAD.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_longlong]
_PREAD.restype = ctypes.c_ssize_t


def pread_holding_gil(fd: int, n: int, offset: int) -> bytearray:
    """``n`` bytes at ``offset`` (fewer at the end of the file) without releasing the GIL."""
    buf = bytearray(n)
    got = _PREAD(fd, (ctypes.c_char * n).from_buffer(buf), n, offset) if n else 0
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    del buf[got:]
    return buf


class OpenChunks:
    """An LRU of ``(fd, index entries)`` by ``(store root, chunk file)``; evicted and dropped entries are closed."""

    MAX = 128
    """Open files at most (a process's default limit is often 1024)."""

    def __init__(self) -> None:
        self._lru: OrderedDict[tuple[str, str], tuple[int, list[Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> tuple[int, list[Any]] | None:
        with self._lock:
            hit = self._lru.get(key)
            if hit is not None:
                self._lru.move_to_end(key)
            return hit

    def put(self, key: tuple[str, str], fd: int, entries: list[Any]) -> tuple[int, list[Any]]:
        """Keep ``fd`` (or close it when another thread kept the same file first); return what is kept."""
        closing: list[int] = []
        with self._lock:
            kept = self._lru.get(key)
            if kept is not None:
                closing.append(fd)
            else:
                kept = self._lru[key] = (fd, entries)
                while len(self._lru) > self.MAX:
                    closing.append(self._lru.popitem(last=False)[1][0])
        for old in closing:
            os.close(old)
        return kept

    def drop(self, key: tuple[str, str]) -> None:
        with self._lock:
            gone = self._lru.pop(key, None)
        if gone is not None:
            os.close(gone[0])

    def drop_store(self, root: str) -> None:
        """Close every file of the store at ``root`` (its backend closes)."""
        with self._lock:
            keys = [k for k in self._lru if k[0] == root]
            gone = [self._lru.pop(k)[0] for k in keys]
        for fd in gone:
            os.close(fd)

    def after_fork(self) -> None:
        """A forked child holds copies of the descriptors: close them and start empty (the parent keeps its own)."""
        self._lock = threading.Lock()
        for fd, _ in self._lru.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._lru.clear()


OPEN_CHUNKS = OpenChunks()
os.register_at_fork(after_in_child=OPEN_CHUNKS.after_fork)
