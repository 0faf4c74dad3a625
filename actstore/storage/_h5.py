"""The HDF5 backend: the same schema in one ``.h5`` file, chunks written and read directly (h5py)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .._errors import ActStoreError, CorruptStoreError, NotAStoreError, StoreExistsError
from ..format._codec import BlockCodec, crc32c
from ..format._format import META_KEY
from ..format._record import Record
from ._lock import FileLock
from ._storage import Backend

__all__ = ["CRC_GROUP", "H5Backend"]

CRC_GROUP = "crc32c"
"""Root group of the checksum datasets: ``crc32c/{array key}`` holds one little-endian uint32 crc32c per block
(HDF5 chunk) of the array, of the encoded bytes exactly as stored (what a Zarr block's trailing crc32c covers)."""


class H5Backend(Backend):
    """One HDF5 file; an HDF5 chunk is one block, written with ``write_direct_chunk`` (blosc filter 32001).

    Each block's crc32c lives in the dataset ``crc32c/{key}`` beside the array and is checked on every
    ``read_block`` (the blocks themselves stay plain blosc frames that h5py decodes). Files of format version 1
    have no checksum datasets and are read unchecked.
    """

    checksums = False

    def __init__(self, path: str | os.PathLike[str], mode: str) -> None:
        self.path = str(path)
        self._mode = mode
        self._io = threading.RLock()
        self._lock: FileLock | None = None
        self._crcs: dict[str, h5py.Dataset | None] = {}
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
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise CorruptStoreError(f"{self.path}: the {META_KEY!r} attribute is not valid JSON: {exc}") from None
        if self._mode == "r":  # readers go by the datasets' extents: they must cover what the record commits
            problems = self.check_datasets(Record.parse(doc, self.path))
            if problems:
                raise CorruptStoreError(f"{len(problems)} datasets of {self.path} disagree with its metadata "
                                        f"record: {problems[0][1]}")
        return doc

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
            self._f.create_dataset(f"{CRC_GROUP}/{key}", shape=(0,), maxshape=(None,), chunks=(4096,), dtype="<u4")

    def _dataset(self, key: str) -> h5py.Dataset:
        try:
            ds = self._f[key]
        except KeyError:
            raise CorruptStoreError(f"{self.path} has no dataset {key!r} although its metadata declares it") from None
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.chunks is None:
            raise CorruptStoreError(f"{self.path}: {key!r} is not a chunked 2-D dataset")
        return ds

    def _crc(self, key: str) -> h5py.Dataset | None:
        """The checksum dataset of ``key``; None only in a version-1 file (no checksums then)."""
        if key not in self._crcs:
            ds = self._f.get(f"{CRC_GROUP}/{key}")
            if ds is None and self._version() >= 2:
                raise CorruptStoreError(f"{self.path} has no checksum dataset {CRC_GROUP}/{key} for array {key!r}")
            if ds is not None and (not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype != np.dtype("<u4")):
                raise CorruptStoreError(f"{self.path}: {CRC_GROUP}/{key} is not a 1-D uint32 dataset")
            self._crcs[key] = ds
        return self._crcs[key]

    def _version(self) -> int:
        try:
            version = json.loads(self._f.attrs.get(META_KEY, "{}")).get("format_version", 2)
        except (ValueError, AttributeError, TypeError):
            return 2
        return version if isinstance(version, int) else 2

    def trim(self, key: str, n_rows: int) -> None:
        """Cut ``key`` to exactly ``n_rows`` rows (and its checksums to the blocks holding them), so that plain
        h5py sees no padding rows past the commit."""
        with self._io:
            ds = self._dataset(key)
            ds.resize((n_rows, ds.shape[1]))
            crc = self._crc(key)
            if crc is not None:
                crc.resize((-(-n_rows // ds.chunks[0]),))

    def set_rows(self, key: str, n_rows: int) -> None:
        with self._io:
            ds = self._dataset(key)
            if ds.shape[0] < n_rows:  # never shrink: rows past the commit may already hold the next chunk
                ds.resize((n_rows, ds.shape[1]))

    def write_chunk(self, key: str, chunk: int, blocks: list[Any], *, durable: bool) -> None:
        with self._io:
            ds = self._dataset(key)
            end = (chunk * len(blocks) + len(blocks)) * ds.chunks[0]
            if ds.shape[0] < end:
                ds.resize((end, ds.shape[1]))
            crc = self._crc(key)
            if crc is not None and crc.shape[0] < chunk * len(blocks) + len(blocks):
                crc.resize((chunk * len(blocks) + len(blocks),))
            self.write_blocks(key, chunk * len(blocks), blocks)

    def write_blocks(self, key: str, first: int, blocks: list[Any]) -> None:
        """Write encoded blocks ``first, first + 1, ...`` (None = skip) and their crc32c, growing nothing: the
        dataset and its checksums must already cover them (a publish sizes them exactly first, so HDF5 never
        rewrites a partial edge chunk, which would change its bytes under its checksum)."""
        with self._io:
            ds = self._dataset(key)
            crc = self._crc(key)
            for i, blob in enumerate(blocks):
                if blob is None:
                    continue
                data = bytes(blob) if not isinstance(blob, list) else b"".join(bytes(p) for p in blob)
                ds.id.write_direct_chunk(((first + i) * ds.chunks[0], 0), data, 0)
                if crc is not None:
                    crc[first + i] = int.from_bytes(crc32c(data), "little")

    def read_chunk(
        self, key: str, chunk: int, n_blocks: int, *, scratch: bool = False, max_bytes: int | None = None
    ) -> list[memoryview | bytes | None]:
        """The blocks of a chunk; those past the dataset's end (it holds exactly the committed rows, checked on
        open by :meth:`check_datasets`) are None."""
        with self._io:
            ds = self._dataset(key)
            blocks = range(chunk * n_blocks, chunk * n_blocks + n_blocks)
            return [self.read_block(key, b, n_blocks) if b * ds.chunks[0] < ds.shape[0] else None for b in blocks]

    def other_arrays(self, record: Record) -> list[tuple[str, int, np.dtype, int]]:
        """(key, width, dtype, rows) of the chunked 2-D datasets the record does not declare (derived arrays such
        as per-row statistics), checksum datasets excluded."""
        known = {a.key for a, _ in record.arrays()}
        found: list[tuple[str, int, np.dtype, int]] = []

        def visit(name: str, obj: Any) -> None:
            if (isinstance(obj, h5py.Dataset) and name not in known and not name.startswith(f"{CRC_GROUP}/")
                    and obj.ndim == 2 and obj.chunks is not None):
                found.append((name, int(obj.shape[1]), np.dtype(obj.dtype), int(obj.shape[0])))

        with self._io:
            self._f.visititems(visit)
        return found

    def check_array_docs(self, record: Record) -> list[tuple[str, str]]:
        """Each dataset's shape, dtype, chunks, filter and checksum dataset against the record."""
        return self.check_datasets(record)

    def check_datasets(self, record: Record) -> list[tuple[str, str]]:
        """``(key, problem)`` for every dataset that disagrees with the record: missing, not a chunked 2-D dataset,
        fewer rows than committed, another width, dtype, chunk shape or filter, or (version 2) a checksum dataset
        missing or shorter than the committed blocks."""
        layout = record.layout
        block_rows = layout.block_rows
        want_filter = BlockCodec(layout.codec, np.dtype("u1"), checksum=False).hdf5_filter().get("compression")
        out: list[tuple[str, str]] = []
        with self._io:
            for spec, n in record.arrays():
                try:
                    ds = self._dataset(spec.key)
                    crc = self._crc(spec.key)
                except CorruptStoreError as exc:
                    out.append((spec.key, str(exc)))
                    continue
                found = {"rows": ds.shape[0] >= n, "width": ds.shape[1] == spec.width,
                         "dtype": ds.dtype == spec.dtype, "chunks": ds.chunks == (block_rows, spec.width),
                         "filter": _filter_ids(ds) == ([] if want_filter is None else [int(want_filter)]),
                         "checksums": crc is None or crc.shape[0] >= -(-n // block_rows)}
                for what, ok in found.items():
                    if not ok:
                        out.append((spec.key, f"dataset {spec.key} in {self.path}: {what} disagree with the record "
                                              f"(shape {ds.shape}, dtype {ds.dtype}, chunks {ds.chunks}; record: "
                                              f"{n} rows, width {spec.width}, {spec.dtype}, {layout.to_json()})"))
        return out

    def read_block(
        self, key: str, block: int, n_blocks_per_chunk: int, *, max_bytes: int | None = None
    ) -> memoryview | bytes | None:
        with self._io:
            ds = self._dataset(key)
            row = block * ds.chunks[0]
            if row >= ds.shape[0]:
                raise CorruptStoreError(f"block {block} of {key} lies past the end of {self.path}")
            try:  # damaged HDF5 structures (a chunk B-tree, the checksum dataset) surface as h5py's own errors
                info = ds.id.get_chunk_info_by_coord((row, 0))
                if info.byte_offset is None:
                    return None
                _mask, data = ds.id.read_direct_chunk((row, 0))
                crc = self._crc(key)
                stored = None if crc is None else (int(crc[block]) if block < crc.shape[0] else -1)
            except ActStoreError:
                raise
            except (RuntimeError, OSError, ValueError, KeyError) as exc:
                raise CorruptStoreError(f"cannot read block {block} of {key} in {self.path}: the file's HDF5 "
                                        f"structures are damaged ({exc})") from exc
        if stored is not None and int.from_bytes(crc32c(data), "little") != stored:
            raise CorruptStoreError(f"checksum mismatch in block {block} of {key} in {self.path}: the stored bytes "
                                    "are corrupt")
        return data

    def stored_bytes(self) -> int:
        return os.path.getsize(self.path)


def _filter_ids(ds: Any) -> list[int]:
    """The HDF5 filter ids of a dataset's pipeline, from its creation property list (h5py's public low-level API)."""
    plist = ds.id.get_create_plist()
    return [int(plist.get_filter(i)[0]) for i in range(plist.get_nfilters())]
