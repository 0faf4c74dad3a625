"""The writer lock of a store: an ``flock`` on a lock file, proven to name the file it locked, removed on release.

A lock file that can be deleted (by ``overwrite``, by a cleanup, by the last holder on release) is only a lock if
every locker checks, *after* ``flock`` succeeded, that the path still names the inode it locked: otherwise a
second writer can lock a fresh file at the same path while the first still holds the old, unlinked one, and both
"own" the store. :class:`FileLock` does that check and retries on a mismatch, so:

- the holder may unlink the lock file on release (no zero-byte ``.actstore.lock`` / ``x.h5.lock`` left behind):
  a process that opened the old inode before the unlink locks it afterwards, sees the path gone or renamed to a
  new inode and starts again on the path;
- an exclusive holder unlinks; a shared holder unlinks only if it can take the lock exclusively (nobody else holds
  it), so a file other shared holders still hold is never unlinked.

``flock`` locks are released by the OS when the holder dies (SIGKILL included), so a crashed writer never leaves a
store locked. They are per open file (not per process): a second ``FileLock`` in the same process conflicts too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

from .._errors import CorruptStoreError, NotAStoreError, StoreAccessError, StoreLockedError

__all__ = ["FileLock", "lock_error"]

_RETRIES = 1000
"""Times a lock is taken again after its file was replaced under it (each means another holder released it)."""


def lock_error(exc: OSError, path: str, doing: str) -> Exception:
    """The typed error for an ``OSError`` met while ``doing`` something at ``path`` (one line, naming both)."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreAccessError(f"cannot {doing} {path}: {reason} (check the permissions and that the filesystem "
                                "is writable)")
    if exc.errno == errno.ENOENT:
        return NotAStoreError(f"cannot {doing} {path}: {reason}")
    if exc.errno == errno.ELOOP:
        return CorruptStoreError(f"cannot {doing} {path}: it is a symbolic link, which a store never holds")
    return CorruptStoreError(f"cannot {doing} {path}: {reason}")


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not unlinked, not replaced)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


class FileLock:
    """A non-blocking ``flock`` on ``lock_path``, exclusive (one writer) or ``shared`` (several part writers hold a
    multi-part store's root shared, which keeps an exclusive writer out). ``wait`` seconds are spent retrying
    while another process holds it before :class:`StoreLockedError` is raised."""

    def __init__(self, lock_path: str | os.PathLike[str], store: str, *, shared: bool = False, wait: float = 0.0) -> None:
        self.path = str(lock_path)
        self._shared = shared
        deadline = time.monotonic() + wait
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        for _ in range(_RETRIES):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise lock_error(exc, self.path, "create the lock file") from None
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                raise StoreLockedError(f"{store} is already open for writing by another writer (lock held)") from None
            if _same_file(fd, self.path):
                self._fd: int | None = fd
                return
            os.close(fd)  # its holder released and removed it after we opened it: lock the file now at the path
        raise StoreLockedError(f"{store}: the lock file {self.path} kept being replaced; another process is "
                               "creating and removing it")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file if no one else holds it, then unlock. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._shared:
                try:  # not atomic (the shared lock is dropped first), but only ever ends in "do not unlink"
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return
            if _same_file(fd, self.path):
                with contextlib.suppress(OSError):  # a read-only directory keeps its lock file: harmless (inode check)
                    os.unlink(self.path)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock
