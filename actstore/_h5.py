"""The HDF5 backend: the same schema in one ``.h5`` file, chunks written and read directly (h5py)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._backend import Backend, FileLock
from ._codec import BlockCodec
from ._errors import CorruptStoreError, NotAStoreError, StoreExistsError
from ._format import META_KEY

__all__ = ["H5Backend"]


class H5Backend(Backend):
    """One HDF5 file; an HDF5 chunk is one block, written with ``write_direct_chunk`` (blosc filter 32001).

    HDF5 has no per-chunk checksum in this layout; a corrupt block is still caught by the blosc decoder.
    """

    checksums = False

    def __init__(self, path: str | os.PathLike[str], mode: str) -> None:
        self.path = str(path)
        self._mode = mode
        self._io = threading.RLock()
        self._lock: FileLock | None = None
        try:
            if mode == "r":
                import hdf5plugin  # noqa: F401  registers the blosc filter for plain h5py reads

            self._f = h5py.File(path, mode, locking=False)
        except FileNotFoundError:
            raise NotAStoreError(f"no store at {self.path}: the path does not exist") from None
        except OSError as exc:
            raise NotAStoreError(f"{self.path} is not an HDF5 file: {exc}") from None

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, overwrite: bool) -> H5Backend:
        p = Path(path)
        if p.exists():
            if not overwrite:
                raise StoreExistsError(f"{p} already exists; pass resume=True to append or overwrite=True to replace it")
            p.unlink()
        p.parent.mkdir(parents=True, exist_ok=True)
        return cls(p, "w")

    def lock(self) -> None:
        self._lock = FileLock(self.path + ".lock", self.path)

    def close(self) -> None:
        with self._io:
            if self._f.id.valid:
                self._f.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def read_meta(self) -> Any:
        with self._io:
            raw = self._f.attrs.get(META_KEY)
        if raw is None:
            raise NotAStoreError(f"{self.path} is an HDF5 file but not an actstore store (no {META_KEY!r} attribute)")
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        if not isinstance(raw, str):
            raise CorruptStoreError(f"{self.path}: the {META_KEY!r} attribute is not a JSON string")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise CorruptStoreError(f"{self.path}: the {META_KEY!r} attribute is not valid JSON: {exc}") from None

    def write_meta(self, meta: dict[str, Any], *, durable: bool) -> None:
        with self._io:
            self._f.attrs[META_KEY] = json.dumps(meta)
            self._f.flush()
            if durable:
                self.sync()

    def sync(self) -> None:
        with self._io:
            self._f.flush()
            fd = self._f.id.get_vfd_handle()
            os.fsync(fd if isinstance(fd, int) else int(fd))

    def create_array(
        self, key: str, width: int, dtype: np.dtype, codec: BlockCodec, chunk_rows: int, block_rows: int
    ) -> None:
        with self._io:
            self._f.create_dataset(
                key,
                shape=(0, width),
                maxshape=(None, width),
                chunks=(block_rows, width),
                dtype=np.dtype(dtype),
                **codec.hdf5_filter(),
            )

    def _dataset(self, key: str) -> h5py.Dataset:
        try:
            ds = self._f[key]
        except KeyError:
            raise CorruptStoreError(f"{self.path} has no dataset {key!r} although its metadata declares it") from None
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.chunks is None:
            raise CorruptStoreError(f"{self.path}: {key!r} is not a chunked 2-D dataset")
        return ds

    def set_rows(self, key: str, n_rows: int) -> None:
        with self._io:
            ds = self._dataset(key)
            if ds.shape[0] < n_rows:  # never shrink: rows past the commit may already hold the next chunk
                ds.resize((n_rows, ds.shape[1]))

    def write_chunk(self, key: str, chunk: int, blocks: list[Any], *, durable: bool) -> None:
        with self._io:
            ds = self._dataset(key)
            block_rows = ds.chunks[0]
            end = (chunk * len(blocks) + len(blocks)) * block_rows
            if ds.shape[0] < end:
                ds.resize((end, ds.shape[1]))
            for i, blob in enumerate(blocks):
                if blob is not None:
                    data = blob if isinstance(blob, bytes) else b"".join(blob)
                    ds.id.write_direct_chunk(((chunk * len(blocks) + i) * block_rows, 0), data, 0)

    def read_chunk(
        self, key: str, chunk: int, n_blocks: int, *, scratch: bool = False
    ) -> list[memoryview | bytes | None]:
        return [self.read_block(key, chunk * n_blocks + i, n_blocks) for i in range(n_blocks)]

    def read_block(self, key: str, block: int, n_blocks_per_chunk: int) -> memoryview | bytes | None:
        with self._io:
            ds = self._dataset(key)
            row = block * ds.chunks[0]
            if row >= ds.shape[0]:
                raise CorruptStoreError(f"block {block} of {key} lies past the end of {self.path}")
            info = ds.id.get_chunk_info_by_coord((row, 0))
            if info.byte_offset is None:
                return None
            _mask, data = ds.id.read_direct_chunk((row, 0))
        return data

    def stored_bytes(self) -> int:
        return os.path.getsize(self.path)
