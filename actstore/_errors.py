"""The one error hierarchy of actstore.

Every class derives from :class:`ActStoreError` and from the builtin a caller would naturally catch
(``KeyError``, ``ValueError``, ``IndexError``, ``OSError``, ``RuntimeError``).
"""

from __future__ import annotations

__all__ = [
    "ActStoreError",
    "ConfigError",
    "CorruptStoreError",
    "FormatVersionError",
    "InvalidNameError",
    "NotAStoreError",
    "SchemaMismatchError",
    "StoreAccessError",
    "StoreClosedError",
    "StoreExistsError",
    "StoreIndexError",
    "StoreLockedError",
    "UnknownKeyError",
    "WriterClosedError",
    "WriterFailedError",
]


class ActStoreError(Exception):
    """Root of every error actstore raises on purpose."""


class ConfigError(ActStoreError, ValueError):
    """A configuration value outside its valid range (store, loader, feature pass, dashboard options)."""


class UnknownKeyError(ActStoreError, KeyError):
    """A layer, role, step, sample, column or cond name that the store does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class InvalidNameError(ActStoreError, ValueError):
    """A layer, role or cond name that cannot be used as a path component."""


class SchemaMismatchError(ActStoreError, ValueError):
    """Appended data disagrees with what the store already holds (width, dtype, columns, lengths)."""


class StoreIndexError(ActStoreError, IndexError):
    """An index outside the rows of a view, or an index of a kind the view does not support."""


class NotAStoreError(ActStoreError, FileNotFoundError):
    """The path does not exist or holds no actstore store."""


class StoreExistsError(ActStoreError, FileExistsError):
    """``create`` was asked to write where a store already exists (pass ``resume=True`` or ``overwrite=True``)."""


class FormatVersionError(ActStoreError, ValueError):
    """The store was written by a newer (or unknown) format version."""


class CorruptStoreError(ActStoreError, OSError):
    """Stored bytes fail their checksum, cannot be decoded, or metadata is malformed."""


class StoreLockedError(ActStoreError, BlockingIOError):
    """Another writer holds the store's lock."""


class StoreAccessError(ActStoreError, PermissionError):
    """The store (or a file of it) cannot be read or written with this process's permissions, or its filesystem
    is read-only."""


class StoreClosedError(ActStoreError, ValueError):
    """A store (or a loader) was read after ``close()`` (a ``ValueError``, as for a closed file or h5py file)."""


class WriterClosedError(ActStoreError, RuntimeError):
    """The writer was used after ``close()``."""


class WriterFailedError(ActStoreError, RuntimeError):
    """The background writer thread failed; the original exception is chained as ``__cause__``."""

