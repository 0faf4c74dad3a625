"""The storage interface: what every backend (local Zarr directory, object-store Zarr, HDF5 file) offers.

The writer and the reader never go through zarr-python's or h5py's element-wise paths: they move whole encoded
chunks and blocks (see ``_codec``) through this small chunk-level interface, which is what lets them compress on
every core and decode into reused buffers. Backends: ``_zarr`` (local directory), ``_remote`` (fsspec URL),
``_h5`` (one HDF5 file); ``_backend`` picks one for a path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import CorruptStoreError
from ..format._codec import BlockCodec, index_size
from ..format._record import Record

__all__ = ["BACKENDS", "LOCK_NAME", "ROOT_WAIT", "Backend", "check_block_size", "detect_backend", "max_chunk_bytes"]

BACKENDS = ("zarr", "hdf5")
_H5_SUFFIXES = (".h5", ".hdf5")
LOCK_NAME = ".actstore.lock"
ROOT_WAIT = 10.0
"""Seconds a part writer waits for another part that is creating the store root (a brief exclusive hold)."""


def detect_backend(path: str | Path) -> str:
    """``hdf5`` for ``*.h5`` / ``*.hdf5`` paths, else ``zarr``."""
    return "hdf5" if str(path).lower().endswith(_H5_SUFFIXES) else "zarr"


class Backend(ABC):
    """Chunk-level access to one store."""

    path: str
    checksums: bool
    block_sums: bool = False
    """Whether new stores on this backend keep block sums (:mod:`actstore.read._blocksums`): Zarr stores do; HDF5
    files keep a crc32c per block in a dataset indexed by block instead."""

    @abstractmethod
    def read_meta(self) -> Any: ...

    @abstractmethod
    def write_meta(self, meta: dict[str, Any], *, durable: bool) -> None: ...

    @abstractmethod
    def create_array(
        self, key: str, width: int, dtype: np.dtype, codec: BlockCodec, chunk_rows: int, block_rows: int
    ) -> None: ...

    @abstractmethod
    def set_rows(self, key: str, n_rows: int) -> None: ...

    @abstractmethod
    def write_chunk(self, key: str, chunk: int, blocks: list[bytes | None], *, durable: bool) -> None: ...

    @abstractmethod
    def read_chunk(
        self, key: str, chunk: int, n_blocks: int, *, scratch: bool = False, max_bytes: int | None = None
    ) -> list[memoryview | bytes | None]:
        """The encoded blocks of one chunk. With ``scratch`` the views may point into a buffer of the calling
        thread that the thread's next scratch read overwrites (no fresh memory per chunk)."""

    @abstractmethod
    def read_block(
        self, key: str, block: int, n_blocks_per_chunk: int, *, max_bytes: int | None = None
    ) -> memoryview | bytes | None:
        """One encoded block (None: absent); ``max_bytes`` bounds the chunk (see ``max_chunk_bytes``) on backends
        that read chunk files, so a crafted size is refused before it is read."""

    @abstractmethod
    def lock(self) -> None:
        """Take the store's exclusive writer lock or raise ``StoreLockedError``."""

    def sync(self) -> None:  # noqa: B027 - optional hook: backends that buffer override it
        """Make everything written so far durable."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and locks."""

    def stored_bytes(self) -> int:
        """Bytes the store occupies."""
        return 0

    # -- capabilities: what a backend can do beyond the interface above (defaults: it cannot) ---------------------
    def use_direct_io(self, on: bool) -> bool:
        """Write chunk files past the page cache (``O_DIRECT``) from now on; whether this backend can
        (``StoreConfig.direct_io``)."""
        return False

    def read_raw_blocks(self, key: str, chunk: int, outs: list[np.ndarray], checksum: bool) -> list[bytes] | None:
        """Read the blocks of an uncompressed chunk straight into ``outs`` (zero-copy), checking their crc32c;
        return each block's stored crc32c (empty without ``checksum``), or None when this backend cannot (the
        caller then reads and decodes)."""
        return None

    def read_stable_block(
        self, key: str, block: int, n_blocks_per_chunk: int, *, max_bytes: int | None = None
    ) -> memoryview | bytes | bytearray | None:
        """Like :meth:`read_block`, for a block of a chunk that no longer changes (full, every row committed): a
        backend may keep such a chunk open for the next read (default: an ordinary read)."""
        return self.read_block(key, block, n_blocks_per_chunk, max_bytes=max_bytes)

    def check_array_docs(self, record: Record) -> list[tuple[str, str]]:
        """``(array, problem)`` for each array whose own metadata (a Zarr ``zarr.json``, an HDF5 dataset's shape,
        dtype, chunks, filter) disagrees with the record; used by ``verify``."""
        return []

    def leftover_temp_files(self) -> list[Path]:
        """Temp files an interrupted write left (ignored by readers, safe to delete)."""
        return []


def max_chunk_bytes(n_blocks: int, block_bytes: int) -> int:
    """The most bytes a chunk of ``n_blocks`` blocks of ``block_bytes`` decoded bytes can take: each block encoded
    no larger than raw plus blosc's 16-byte header and its crc32c (with slack), plus the index."""
    return n_blocks * (block_bytes + 64) + index_size(n_blocks)


def check_block_size(nbytes: int, max_chunk: int | None, n_blocks: int, inner: int, where: str) -> None:
    if max_chunk is not None and nbytes > (max_chunk - index_size(n_blocks)) // n_blocks:
        raise CorruptStoreError(f"block {inner} of {where} is {nbytes} bytes by its index, more than a block of this "
                                "array can take; refusing to read it")

