"""Keep the encode threads' block-sized buffers in the C heap, reused, instead of fresh memory maps.

Each encoded block is a new buffer of about the block's size (1 MiB at the defaults) allocated by the codec. glibc
serves an allocation above its mmap threshold (128 KiB at process start) with a fresh ``mmap``, page-faulted on
first write and unmapped on free: 256 page faults per MiB encoded, in system time, on every encode thread. glibc
raises the threshold (and its heap-trim threshold, to twice that) to the size of an mmapped block when one is freed
("dynamic mmap threshold", up to 32 MiB), after which such buffers come from the heap and are reused. A chunk
buffer the writer thread frees did this by accident; :func:`keep_blocks_in_heap` does it on purpose, once per
process: it allocates and frees one block of :data:`_SIZE`. Elsewhere (musl, macOS, Windows) it does nothing.
Measured: ``benchmarks/bench_writer`` page faults and system time (docs/benchmarks.md, "Writer ingest").
"""

from __future__ import annotations

import ctypes
import platform
import sys
import threading

__all__ = ["keep_blocks_in_heap"]

_SIZE = 16 << 20
"""Bytes freed: a chunk at the defaults, above any block, below glibc's 32 MiB cap on the dynamic threshold."""

_done = False
_lock = threading.Lock()


def keep_blocks_in_heap() -> bool:
    """Raise glibc's mmap threshold to :data:`_SIZE` (once); True where that was done."""
    global _done
    with _lock:
        if _done:
            return True
        if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
            return False
        try:
            libc = ctypes.CDLL(None)
            libc.malloc.restype = ctypes.c_void_p
            libc.malloc.argtypes = [ctypes.c_size_t]
            libc.free.argtypes = [ctypes.c_void_p]
        except (OSError, AttributeError):
            return False
        block = libc.malloc(_SIZE)
        if block:
            libc.free(block)
        _done = bool(block)
        return _done
