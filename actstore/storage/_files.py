"""Opening a store's local files as a hostile directory may hold them: regular files inside the store, sizes known
before anything is read.

A store directory is data, and data can be crafted: a FIFO named ``zarr.json`` (an ``open`` that never returns),
a chunk that is a symlink to ``/dev/zero`` or ``/etc/passwd``, a sparse 6 GB chunk, a 2 GB ``zarr.json``. Every read
of a store file goes through :func:`open_regular`, which opens without following a final symlink and without
blocking (``O_NOFOLLOW | O_NONBLOCK``), refuses anything ``fstat`` does not call a regular file, refuses a file
whose directory resolves outside the store (a symlinked directory), and hands back the size, so the caller checks
it against what the format allows before reading a byte. Every failure is a :class:`CorruptStoreError` (or
``NotAStoreError`` for a missing path) naming the path.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from .._errors import CorruptStoreError, StoreAccessError

__all__ = ["StoreFiles", "fsync_dir", "read_error", "read_into", "write_all"]

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_ABSENT = (FileNotFoundError, NotADirectoryError)


def read_error(exc: OSError, path: str | os.PathLike[str]) -> CorruptStoreError | StoreAccessError:
    """One-line typed error for an ``OSError`` met reading ``path``."""
    if exc.errno == errno.ELOOP:
        return CorruptStoreError(f"{path} is a symbolic link (or a loop of them); a store holds only regular files")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreAccessError(f"cannot read {path}: permission denied (check the file's permissions)")
    if exc.errno == errno.EISDIR:
        return CorruptStoreError(f"{path} is a directory where the store holds a file")
    return CorruptStoreError(f"cannot read {path}: {exc.strerror or exc}")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


class StoreFiles:
    """The files under one store directory, opened safely (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._real_root: str | None = None
        self._inside: set[str] = set()
        """Directories (relative) already seen to resolve inside the store."""

    def _check_inside(self, rel_dir: str) -> None:
        if rel_dir in self._inside:
            return
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        real = os.path.realpath(self.root / rel_dir)
        if real != self._real_root and not real.startswith(self._real_root.rstrip("/") + "/"):
            raise CorruptStoreError(f"{self.root / rel_dir} resolves to {real}, outside the store {self.root} "
                                    "(a symlinked directory); refusing to read through it")
        self._inside.add(rel_dir)

    def open(self, rel: str, limit: int | None = None, what: str = "") -> tuple[int, int] | None:
        """``(fd, size)`` of the regular file ``rel``, or None when absent. ``limit``: a larger file is refused
        before it is read (``what`` names what the file should hold, for the message)."""
        path = self.root / rel
        try:
            fd = os.open(path, _FLAGS)
        except _ABSENT:
            return None
        except OSError as exc:
            raise read_error(exc, path) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptStoreError(f"{path} is {_kind(st.st_mode)}; a store holds only regular files")
            self._check_inside(os.path.dirname(rel))
            if limit is not None and st.st_size > limit:
                raise CorruptStoreError(f"{path} is {st.st_size} bytes, more than the {limit} bytes {what or 'it'} "
                                        "can take; refusing to read it")
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size

    def read(self, rel: str, limit: int | None = None, what: str = "") -> bytes | None:
        """The whole regular file ``rel`` (at most ``limit`` bytes), or None when absent."""
        got = self.open(rel, limit, what)
        if got is None:
            return None
        fd, size = got
        try:
            buf = bytearray(size)
            return bytes(buf[: read_into(fd, memoryview(buf), 0)])
        finally:
            os.close(fd)


def read_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``fd`` at ``offset`` (``preadv`` until full or end of file); the bytes read."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def write_all(fd: int, parts: list[Any]) -> None:
    """``writev`` the buffers, continuing after short writes."""
    views = [memoryview(p).cast("B") for p in parts if memoryview(p).nbytes]
    while views:
        n = os.writev(fd, views[:1024])
        while n:
            if n >= views[0].nbytes:
                n -= views[0].nbytes
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0


def fsync_dir(path: Path) -> None:
    """fsync a directory: a rename or a new file in it survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
