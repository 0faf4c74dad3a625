"""Files written with ``O_DIRECT`` (``StoreConfig.direct_io``): from an aligned buffer to the disk, past the page cache.

A buffered write copies every byte into page-cache pages the kernel must find first. Where those pages are memory
the machine hands out for the first time (measured on a KVM guest: about 3 CPU s of kernel time per GB, 0.3-0.6
GB/s for plain files, against 2-3 GB/s once pages are reused), a long capture writing new chunk files runs at that
rate. ``O_DIRECT`` skips the page cache: the disk's bandwidth is the limit instead, and readers read from the disk.

Each file is assembled in this thread's reused, page-aligned buffer, padded to a multiple of :data:`ALIGN`,
written, then truncated to its true size. A filesystem that refuses ``O_DIRECT`` (tmpfs: ``EINVAL``) is reported
by returning False, with nothing left behind.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ALIGN", "supported", "write_file"]

ALIGN = 4096
"""Offset, size and buffer alignment of every ``O_DIRECT`` write (the page size; a multiple of any disk's sector)."""
_local = threading.local()


def supported() -> bool:
    """Whether this platform has ``O_DIRECT`` at all (Linux does; macOS does not)."""
    return hasattr(os, "O_DIRECT")


def _buffer(size: int) -> mmap.mmap:
    """This thread's page-aligned buffer of at least ``size`` bytes (kept: fresh memory costs page faults)."""
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        buf = _local.buf = mmap.mmap(-1, max(size, 1 << 20))
    return buf


def write_file(path: Path, parts: list[Any], *, durable: bool) -> bool:
    """Write ``parts`` (buffers, back to back) as the new file ``path`` with ``O_DIRECT``; ``durable`` fsyncs it.
    False, with no file left, when the filesystem refuses ``O_DIRECT``; any other error is raised (no file left)."""
    views = [np.frombuffer(memoryview(p).cast("B"), dtype=np.uint8) for p in parts]
    total = sum(v.size for v in views)
    padded = -(-total // ALIGN) * ALIGN
    buf = _buffer(padded)
    flat = np.frombuffer(buf, dtype=np.uint8, count=padded)
    pos = 0
    for v in views:  # numpy's copy releases the GIL
        flat[pos : pos + v.size] = v
        pos += v.size
    flat[total:padded] = 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)  # type: ignore[attr-defined]
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    view, done = memoryview(buf)[:padded], 0
    try:
        while done < padded:
            done += os.pwrite(fd, view[done:], done)
        os.ftruncate(fd, total)
        if durable:
            os.fsync(fd)
    except BaseException as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        if isinstance(exc, OSError) and exc.errno == errno.EINVAL and done == 0:  # the first aligned write refused
            return False
        raise
    finally:
        view.release()
    os.close(fd)
    return True
