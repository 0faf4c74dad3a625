"""Where bytes live: a local Zarr v3 directory or one HDF5 file, behind one small chunk-level interface.

The writer and the reader never go through zarr-python's or h5py's element-wise paths: they move whole encoded
chunks and blocks (see ``_codec``), which is what lets them compress on every core and decode into reused buffers.
The files stay ordinary Zarr v3 / HDF5 that other tools read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._codec import BlockCodec, crc32c, index_size, parse_index, shard_parts, split_shard
from ._errors import CorruptStoreError, NotAStoreError, StoreExistsError, StoreLockedError
from ._files import StoreFiles, read_into
from ._format import META_KEY
from ._lock import FileLock, lock_error

__all__ = ["BACKENDS", "LOCK_NAME", "ROOT_WAIT", "Backend", "FileLock", "ZarrDirBackend", "create_backend", "max_chunk_bytes", "detect_backend", "open_backend"]

BACKENDS = ("zarr", "hdf5")
_H5_SUFFIXES = (".h5", ".hdf5")
_MAX_META_BYTES = 64 << 20
_MAX_DOC_BYTES = 1 << 20
"""Larger than any array or group zarr.json actstore writes (about 1 KiB)."""
LOCK_NAME = ".actstore.lock"
ROOT_WAIT = 10.0
"""Seconds a part writer waits for another part that is creating the store root (a brief exclusive hold)."""


def detect_backend(path: str | os.PathLike[str]) -> str:
    """``hdf5`` for ``*.h5`` / ``*.hdf5`` paths, else ``zarr``."""
    return "hdf5" if str(path).lower().endswith(_H5_SUFFIXES) else "zarr"


class Backend(ABC):
    """Chunk-level access to one store."""

    path: str
    checksums: bool

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


# ---------------------------------------------------------------------------------------------------- zarr

_SCRATCH = threading.local()


def _array_doc(width: int, dtype: np.dtype, codec: BlockCodec, chunk_rows: int, block_rows: int) -> dict[str, Any]:
    """The zarr.json of one of our arrays: rows x width, sharded into chunks of blocks (see ``_codec``)."""
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [0, width],
        "data_type": np.dtype(dtype).name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk_rows, width]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [block_rows, width],
                    "codecs": codec.zarr_codecs(),
                    "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
                    "index_location": "end",
                },
            }
        ],
        "attributes": {},
        "storage_transformers": [],
    }


class ZarrBackend(Backend):
    """A Zarr v3 hierarchy over a key-value store; subclasses supply the five byte-level primitives."""

    checksums = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._groups: set[str] = set()
        self._shapes: dict[str, dict[str, Any]] = {}

    # -- primitives
    @abstractmethod
    def _get(self, rel: str, limit: int | None = None) -> bytes | None:
        """The whole object, or None when absent; one larger than ``limit`` is refused before it is read."""

    @abstractmethod
    def _get_tail(self, rel: str, n: int) -> tuple[bytes, int] | None:
        """The last ``n`` bytes and the object's size, or None when absent."""

    @abstractmethod
    def _get_range(self, rel: str, start: int, n: int) -> bytes:
        """``n`` bytes from ``start``."""

    @abstractmethod
    def _put(self, rel: str, data: bytes | list[Any], *, durable: bool) -> None:
        """Write the object (bytes, or buffers written back to back) atomically: readers see the old or the new
        bytes, never a mix."""

    # -- metadata
    def _ensure_groups(self, key: str) -> None:
        parts = key.split("/")[:-1]
        for i in range(len(parts)):
            group = "/".join(parts[: i + 1])
            if group in self._groups:
                continue
            if self._get(f"{group}/zarr.json", _MAX_DOC_BYTES) is None:
                doc = {"zarr_format": 3, "node_type": "group", "attributes": {}}
                self._put(f"{group}/zarr.json", json.dumps(doc).encode(), durable=False)
            self._groups.add(group)

    def read_meta(self) -> Any:
        raw = self._get("zarr.json", _MAX_META_BYTES)
        if raw is None:
            raise NotAStoreError(f"{self.path} is not an actstore store: it has no zarr.json")
        if len(raw) > _MAX_META_BYTES:
            raise CorruptStoreError(f"{self.path}/zarr.json is {len(raw)} bytes, more than any actstore metadata")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise CorruptStoreError(f"{self.path}/zarr.json is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("attributes"), dict):
            raise NotAStoreError(f"{self.path} is a zarr node without attributes, not an actstore store")
        if META_KEY not in doc["attributes"]:
            raise NotAStoreError(f"{self.path} is a zarr group but not an actstore store (no {META_KEY!r} attribute)")
        return doc["attributes"][META_KEY]

    def write_meta(self, meta: dict[str, Any], *, durable: bool) -> None:
        doc = {"zarr_format": 3, "node_type": "group", "attributes": {META_KEY: meta}}
        self._put("zarr.json", json.dumps(doc, indent=1).encode(), durable=durable)

    # -- arrays
    def create_array(
        self, key: str, width: int, dtype: np.dtype, codec: BlockCodec, chunk_rows: int, block_rows: int
    ) -> None:
        self._ensure_groups(key)
        doc = _array_doc(width, dtype, codec, chunk_rows, block_rows)
        self._put(f"{key}/zarr.json", json.dumps(doc, indent=1).encode(), durable=False)
        self._shapes[key] = doc

    def set_rows(self, key: str, n_rows: int) -> None:
        doc = self._shapes.get(key)
        if doc is None:
            raw = self._get(f"{key}/zarr.json", _MAX_DOC_BYTES)
            if raw is None:
                raise CorruptStoreError(f"{self.path} has no array {key!r} although its metadata declares it")
            try:
                doc = json.loads(raw)
                doc["shape"][0] += 0
            except (ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
                raise CorruptStoreError(f"{self.path}/{key}/zarr.json is not a valid array document: {exc!r}") from None
            self._shapes[key] = doc
        if doc["shape"][0] != n_rows:
            doc["shape"][0] = n_rows
            self._put(f"{key}/zarr.json", json.dumps(doc, indent=1).encode(), durable=False)

    @staticmethod
    def _chunk_key(key: str, chunk: int) -> str:
        return f"{key}/c/{chunk}/0"

    def write_chunk(self, key: str, chunk: int, blocks: list[Any], *, durable: bool) -> None:
        self._put(self._chunk_key(key, chunk), shard_parts(blocks), durable=durable)

    def read_chunk(
        self, key: str, chunk: int, n_blocks: int, *, scratch: bool = False, max_bytes: int | None = None
    ) -> list[memoryview | bytes | None]:
        where = f"chunk {chunk} of {key} in {self.path}"
        rel = self._chunk_key(key, chunk)
        data = self._get_scratch(rel, max_bytes) if scratch else self._get(rel, max_bytes)
        if data is None:
            raise CorruptStoreError(f"{where} is missing although the commit record covers it")
        return list(split_shard(data, n_blocks, where=where))

    def _get_scratch(self, rel: str, limit: int | None = None) -> memoryview | bytes | None:
        """Like ``_get``, possibly into a per-thread reused buffer."""
        return self._get(rel, limit)

    def _size(self, rel: str) -> int | None:
        got = self._get_tail(rel, 1)
        return None if got is None else got[1]

    def read_block(
        self, key: str, block: int, n_blocks_per_chunk: int, *, max_bytes: int | None = None
    ) -> memoryview | bytes | None:
        """A block by two ranged reads (the chunk's index, then the block). A writer may replace the chunk between
        them (a partial chunk grows): then the size differs afterwards and the read starts again."""
        chunk, inner = divmod(block, n_blocks_per_chunk)
        where = f"chunk {chunk} of {key} in {self.path}"
        rel = self._chunk_key(key, chunk)
        isize = index_size(n_blocks_per_chunk)
        for _ in range(5):
            got = self._get_tail(rel, isize)
            if got is None:
                raise CorruptStoreError(f"{where} is missing although the commit record covers it")
            tail, size = got
            if size < isize or len(tail) != isize:
                raise CorruptStoreError(f"{where} is truncated: {size} bytes, shorter than its {isize}-byte index")
            entry = parse_index(tail, n_blocks_per_chunk, size - isize, where=where)[inner]
            if entry is None:
                return None
            _check_block_size(entry[1], max_bytes, n_blocks_per_chunk, inner, where)
            data = self._get_range(rel, entry[0], entry[1])
            if self._size(rel) == size and len(data) == entry[1]:
                return data
        raise CorruptStoreError(f"{where} kept changing while it was read")


class ZarrDirBackend(ZarrBackend):
    """A Zarr v3 hierarchy in a local directory, read and written with plain file I/O."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(str(path))
        self.root = Path(path)
        self._files = StoreFiles(path)
        self._lock: FileLock | None = None
        self._root_lock: FileLock | None = None

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, overwrite: bool) -> ZarrDirBackend:
        """A new, empty store directory, returned locked. The lock is taken before anything in the directory is
        removed, and what is there is judged again under it: a writer that lost a race sees the winner's lock
        (``StoreLockedError``), never a directory it may delete. The directory itself is never removed (its lock
        file lives in it); ``overwrite`` empties it."""
        root = Path(path)
        _refuse_foreign(root)  # before anything is created: a plain file or someone else's directory stays as it is
        be = cls(root)
        for _ in range(3):
            try:
                root.mkdir(parents=True, exist_ok=True)
            except FileExistsError:  # a file (or a dangling link) appeared at the path
                raise StoreExistsError(f"{root} exists and is not a directory; refusing to replace it") from None
            except OSError as exc:
                raise lock_error(exc, str(root), "create the store directory") from None
            try:
                be.lock()
                break
            except NotAStoreError:  # the directory was removed between mkdir and the lock: make it again
                continue
        else:
            raise StoreLockedError(f"{root} keeps disappearing while it is created; another process is removing it")
        try:
            if (root / "zarr.json").exists():  # a store, maybe made by a writer that won a race and closed since
                if not overwrite:
                    raise StoreExistsError(
                        f"{root} already exists; pass resume=True to append or overwrite=True to replace it"
                    )
            elif not _interrupted_create(root):
                raise StoreExistsError(f"{root} exists and is not an actstore store; refusing to delete it")
            _empty_dir(root)
        except BaseException:
            be.close()
            raise
        return be

    def lock(self) -> None:
        """Take the writer lock (idempotent). A part of a multi-part store also holds the store root's lock shared,
        so a single-store writer (``overwrite``) cannot empty the root while a part is written."""
        if self._lock is not None:
            return
        store_root = _part_root(self.root)
        root_lock = None
        if store_root is not None:
            root_lock = FileLock(store_root / LOCK_NAME, str(store_root), shared=True, wait=ROOT_WAIT)
        try:
            self._lock = FileLock(self.root / LOCK_NAME, self.path)
        except BaseException:
            if root_lock is not None:
                root_lock.release()
            raise
        self._root_lock = root_lock

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._root_lock is not None:
            self._root_lock.release()
            self._root_lock = None

    def _get(self, rel: str, limit: int | None = None) -> bytes | None:
        return self._files.read(rel, limit, "this file")

    def _get_scratch(self, rel: str, limit: int | None = None) -> memoryview | bytes | None:
        got = self._files.open(rel, limit, "a chunk of this array")
        if got is None:
            return None
        fd, size = got
        try:
            buf = getattr(_SCRATCH, "buf", None)
            if buf is None or len(buf) < size:
                buf = _SCRATCH.buf = bytearray(max(size, 1 << 20))
            view = memoryview(buf)[:size]
            return view[: read_into(fd, view, 0)]
        finally:
            os.close(fd)

    def _get_tail(self, rel: str, n: int) -> tuple[bytes, int] | None:
        got = self._files.open(rel)
        if got is None:
            return None
        fd, size = got
        try:
            return os.pread(fd, n, max(0, size - n)), size
        finally:
            os.close(fd)

    def _get_range(self, rel: str, start: int, n: int) -> bytes:
        got = self._files.open(rel)
        if got is None:
            raise CorruptStoreError(f"{self.root / rel} disappeared while it was read")
        try:
            return os.pread(got[0], n, start)
        finally:
            os.close(got[0])

    @contextlib.contextmanager
    def _open_chunk(
        self, key: str, chunk: int, n_blocks: int, max_bytes: int | None = None
    ) -> Iterator[tuple[int, list[tuple[int, int] | None]]]:
        """An open chunk file and its parsed index. Index and blocks are read through this one descriptor: a
        writer may rename a newer version of the chunk into place meanwhile, and offsets from one version must
        never be applied to the other."""
        where = f"chunk {chunk} of {key} in {self.path}"
        got = self._files.open(self._chunk_key(key, chunk), max_bytes, "a chunk of this array")
        if got is None:
            raise CorruptStoreError(f"{where} is missing although the commit record covers it")
        fd, size = got
        try:
            isize = index_size(n_blocks)
            if size < isize:
                raise CorruptStoreError(f"{where} is truncated: {size} bytes, shorter than its {isize}-byte index")
            yield fd, parse_index(os.pread(fd, isize, size - isize), n_blocks, size - isize, where=where)
        finally:
            os.close(fd)

    def read_block(
        self, key: str, block: int, n_blocks_per_chunk: int, *, max_bytes: int | None = None
    ) -> memoryview | bytes | None:
        chunk, inner = divmod(block, n_blocks_per_chunk)
        with self._open_chunk(key, chunk, n_blocks_per_chunk, max_bytes) as (fd, entries):
            entry = entries[inner]
            if entry is None:
                return None
            _check_block_size(entry[1], max_bytes, n_blocks_per_chunk, inner, f"chunk {chunk} of {key} in {self.path}")
            return os.pread(fd, entry[1], entry[0])

    def read_raw_blocks(self, key: str, chunk: int, outs: list[np.ndarray], checksum: bool) -> bool:
        """Read a whole chunk of raw (codec ``none``) blocks straight into ``outs`` with one ``preadv``, no
        intermediate copy; verifies the checksums. False when the chunk is not laid out that way."""
        where = f"chunk {chunk} of {key} in {self.path}"
        step = outs[0].nbytes + (4 if checksum else 0)
        crcs = [bytearray(4) for _ in outs] if checksum else []
        with self._open_chunk(key, chunk, len(outs), index_size(len(outs)) + step * len(outs)) as (fd, entries):
            if any(e != (i * step, step) for i, e in enumerate(entries)):
                return False
            views: list[Any] = []
            for i, out in enumerate(outs):
                views.append(memoryview(out).cast("B"))
                if checksum:
                    views.append(crcs[i])
            got = os.preadv(fd, views, 0)
        if got != step * len(outs):
            raise CorruptStoreError(f"{where} is truncated: read {got} of {step * len(outs)} bytes")
        for i, out in enumerate(outs):
            if checksum and crc32c(memoryview(out).cast("B")) != bytes(crcs[i]):
                raise CorruptStoreError(f"checksum mismatch in block {i} of {where}: the stored bytes are corrupt")
        return True

    def _put(self, rel: str, data: bytes | list[Any], *, durable: bool) -> None:
        target = self.root / rel
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, [data] if isinstance(data, bytes) else data)
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, target)
        if durable:
            dfd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def stored_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file() and not p.name.startswith("."))


def max_chunk_bytes(n_blocks: int, block_bytes: int) -> int:
    """The most bytes a chunk of ``n_blocks`` blocks of ``block_bytes`` decoded bytes can take: each block encoded
    no larger than raw plus blosc's 16-byte header and its crc32c (with slack), plus the index."""
    return n_blocks * (block_bytes + 64) + index_size(n_blocks)


def _check_block_size(nbytes: int, max_chunk: int | None, n_blocks: int, inner: int, where: str) -> None:
    if max_chunk is not None and nbytes > (max_chunk - index_size(n_blocks)) // n_blocks:
        raise CorruptStoreError(f"block {inner} of {where} is {nbytes} bytes by its index, more than a block of this "
                                "array can take; refusing to read it")


def _write_all(fd: int, parts: list[Any]) -> None:
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


def create_backend(
    path: str | os.PathLike[str], backend: str, *, overwrite: bool, storage_options: dict[str, Any] | None = None
) -> Backend:
    """A new, empty store of the given backend at ``path`` (a local path or, for zarr, a URL)."""
    from ._remote import ZarrRemoteBackend, is_url

    if backend == "hdf5":
        from ._h5 import H5Backend

        return H5Backend.create(path, overwrite=overwrite)
    if is_url(path):
        return ZarrRemoteBackend.create(str(path), overwrite=overwrite, storage_options=storage_options)
    return ZarrDirBackend.create(_local(path), overwrite=overwrite)


def open_backend(
    path: str | os.PathLike[str], backend: str, *, writable: bool, storage_options: dict[str, Any] | None = None
) -> Backend:
    """An existing store; raises :class:`NotAStoreError` when there is none."""
    from ._remote import ZarrRemoteBackend, is_url

    if is_url(path):
        if backend == "hdf5":
            raise NotAStoreError(f"HDF5 stores must be local files, got the URL {path}")
        return ZarrRemoteBackend(str(path), storage_options=storage_options, read_only=not writable)
    path = _local(path)
    if not Path(path).exists():
        raise NotAStoreError(f"no store at {path}: the path does not exist")
    if backend == "hdf5":
        from ._h5 import H5Backend

        return H5Backend(path, "r+" if writable else "r")
    if not Path(path).is_dir():
        raise NotAStoreError(f"{path} is a file, not a Zarr store directory (HDF5 stores end in .h5)")
    return ZarrDirBackend(path)


def store_exists(path: str | os.PathLike[str], backend: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``path`` holds a store's root (for ``create(resume=True)``)."""
    from ._remote import ZarrRemoteBackend, is_url

    if is_url(path):
        return ZarrRemoteBackend(str(path), storage_options=storage_options, read_only=True)._get("zarr.json") is not None
    local = Path(_local(path))
    return local.exists() and not (backend == "zarr" and _interrupted_create(local))


def _interrupted_create(root: Path) -> bool:
    """A directory holding only what a killed ``create()`` leaves: the lock file and temp files, no zarr.json."""
    if not root.is_dir() or (root / "zarr.json").exists():
        return False
    return all(p.name == LOCK_NAME or (p.name.startswith(".") and p.name.endswith(".tmp")) for p in root.iterdir())


def _store_or_interrupted(root: Path) -> bool:
    """A store (zarr.json) or what a ``create()`` leaves before its first zarr.json, judged without the lock: a
    writer may rename its zarr.json into place between two looks, so a listing that is not a leftover is looked at
    once more for a zarr.json."""
    names = os.listdir(root)
    if "zarr.json" in names:
        return True
    if all(n == LOCK_NAME or (n.startswith(".") and n.endswith(".tmp")) for n in names):
        return True
    return (root / "zarr.json").exists()


def _refuse_foreign(root: Path) -> None:
    """``StoreExistsError`` when ``root`` is something ``create`` must not touch: a file, a link, or a directory
    that is neither empty, nor a store, nor what a killed ``create()`` leaves."""
    try:
        if root.is_symlink() or (root.exists() and not root.is_dir()):
            raise StoreExistsError(f"{root} exists and is not a directory; refusing to replace it")
        if root.is_dir() and not _store_or_interrupted(root):
            raise StoreExistsError(f"{root} exists and is not an actstore store; refusing to delete it")
    except StoreExistsError:
        raise
    except OSError as exc:
        raise lock_error(exc, str(root), "inspect") from None


def _empty_dir(root: Path) -> None:
    """Remove everything in ``root`` but its lock file (which the caller holds)."""
    for child in root.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _part_root(root: Path) -> Path | None:
    """The store root when ``root`` is a part directory ``{store}/parts/NNNNN`` of a multi-part store."""
    store = root.parent.parent
    if root.parent.name == "parts" and re.fullmatch(r"\d{5}", root.name) and (store / "zarr.json").is_file():
        return store
    return None


def _local(path: str | os.PathLike[str]) -> str:
    text = str(path)
    return text[len("file://") :] if text.startswith("file://") else text
