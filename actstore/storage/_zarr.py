"""Zarr v3 stores: a local directory (``ZarrDirBackend``) and the shared logic of every Zarr backend.

Arrays are Zarr v3 sharded arrays (one shard = one actstore chunk, one inner chunk = one block, crc32c per block;
see ``docs/format.md``) that plain zarr-python and tensorstore read. The directory backend reads only regular files
inside the store (``_files``), takes the writer lock before creating or removing anything (``_lock``), and writes
every file by an atomic rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import uuid
import warnings
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import CorruptStoreError, NotAStoreError, StoreExistsError, StoreLockedError
from ..format._arraymeta import array_doc, check_zarr_array_docs
from ..format._codec import BlockCodec, crc32c, index_size, parse_index, shard_parts, split_shard
from ..format._format import META_KEY
from ..format._record import Record
from . import _direct
from ._files import StoreFiles, fsync_dir, read_into, write_all
from ._lock import FileLock, lock_error
from ._openchunks import OPEN_CHUNKS, pread_holding_gil
from ._storage import LOCK_NAME, ROOT_WAIT, Backend, check_block_size

__all__ = ["ZarrBackend", "ZarrDirBackend", "interrupted_create"]

_MAX_META_BYTES = 64 << 20
MAX_DOC_BYTES = 1 << 20
"""Larger than any array or group zarr.json actstore writes (about 1 KiB)."""
_SCRATCH = threading.local()
"""Per-thread scratch buffer of chunk reads (no fresh memory per chunk)."""



class ZarrBackend(Backend):
    """A Zarr v3 hierarchy over a key-value store; subclasses supply the five byte-level primitives."""

    checksums = True
    block_sums = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._groups: set[str] = set()
        self._shapes: dict[str, dict[str, Any]] = {}

    def has_root(self) -> bool:
        """Whether the store's root ``zarr.json`` exists."""
        return self._get("zarr.json", _MAX_META_BYTES) is not None

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
            if self._get(f"{group}/zarr.json", MAX_DOC_BYTES) is None:
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
        doc = array_doc(width, dtype, codec, chunk_rows, block_rows)
        self._put(f"{key}/zarr.json", json.dumps(doc, indent=1).encode(), durable=False)
        self._shapes[key] = doc

    def set_rows(self, key: str, n_rows: int) -> None:
        doc = self._shapes.get(key)
        if doc is None:
            raw = self._get(f"{key}/zarr.json", MAX_DOC_BYTES)
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
            check_block_size(entry[1], max_bytes, n_blocks_per_chunk, inner, where)
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
        self._direct = False
        """Chunk files are written with ``O_DIRECT`` (:meth:`use_direct_io`)."""

    def use_direct_io(self, on: bool) -> bool:
        self._direct = on and _direct.supported()
        return self._direct

    def write_chunk(self, key: str, chunk: int, blocks: list[Any], *, durable: bool) -> None:
        rel, parts = self._chunk_key(key, chunk), shard_parts(blocks)
        if not (self._direct and self._put_direct(rel, parts, durable=durable)):
            self._put(rel, parts, durable=durable)

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
            elif not interrupted_create(root):
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
        OPEN_CHUNKS.drop_store(self.path)
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

    def _open_indexed(
        self, key: str, chunk: int, n_blocks: int, max_bytes: int | None = None
    ) -> tuple[int, list[tuple[int, int] | None]]:
        """A chunk file opened, and its parsed index; the caller closes the descriptor."""
        where = f"chunk {chunk} of {key} in {self.path}"
        got = self._files.open(self._chunk_key(key, chunk), max_bytes, "a chunk of this array")
        if got is None:
            raise CorruptStoreError(f"{where} is missing although the commit record covers it")
        fd, size = got
        try:
            isize = index_size(n_blocks)
            if size < isize:
                raise CorruptStoreError(f"{where} is truncated: {size} bytes, shorter than its {isize}-byte index")
            return fd, parse_index(os.pread(fd, isize, size - isize), n_blocks, size - isize, where=where)
        except BaseException:
            os.close(fd)
            raise

    @contextlib.contextmanager
    def _open_chunk(
        self, key: str, chunk: int, n_blocks: int, max_bytes: int | None = None
    ) -> Iterator[tuple[int, list[tuple[int, int] | None]]]:
        """An open chunk file and its parsed index. Index and blocks are read through this one descriptor: a
        writer may rename a newer version of the chunk into place meanwhile, and offsets from one version must
        never be applied to the other."""
        fd, entries = self._open_indexed(key, chunk, n_blocks, max_bytes)
        try:
            yield fd, entries
        finally:
            os.close(fd)

    def read_block(
        self, key: str, block: int, n_blocks_per_chunk: int, *, max_bytes: int | None = None
    ) -> memoryview | bytes | None:
        chunk, inner = divmod(block, n_blocks_per_chunk)
        OPEN_CHUNKS.drop((self.path, self._chunk_key(key, chunk)))  # a re-read: not from a file kept open
        with self._open_chunk(key, chunk, n_blocks_per_chunk, max_bytes) as (fd, entries):
            entry = entries[inner]
            if entry is None:
                return None
            check_block_size(entry[1], max_bytes, n_blocks_per_chunk, inner, f"chunk {chunk} of {key} in {self.path}")
            return os.pread(fd, entry[1], entry[0])

    def read_stable_block(
        self, key: str, block: int, n_blocks_per_chunk: int, *, max_bytes: int | None = None
    ) -> memoryview | bytes | bytearray | None:
        """A block of a chunk that no longer changes, from the chunk file kept open (``_openchunks``): after the
        first read of the chunk, one ``pread`` that keeps the GIL."""
        chunk, inner = divmod(block, n_blocks_per_chunk)
        where = f"chunk {chunk} of {key} in {self.path}"
        cache_key = (self.path, self._chunk_key(key, chunk))
        kept = OPEN_CHUNKS.get(cache_key)
        if kept is None:
            kept = OPEN_CHUNKS.put(cache_key, *self._open_indexed(key, chunk, n_blocks_per_chunk, max_bytes))
        fd, entries = kept
        entry = entries[inner]
        if entry is None:
            return None
        check_block_size(entry[1], max_bytes, n_blocks_per_chunk, inner, where)
        data = pread_holding_gil(fd, entry[1], entry[0])
        if len(data) != entry[1]:
            OPEN_CHUNKS.drop(cache_key)
            raise CorruptStoreError(f"{where} is truncated: block {inner} has {len(data)} of its {entry[1]} bytes")
        return data

    def read_raw_blocks(self, key: str, chunk: int, outs: list[np.ndarray], checksum: bool) -> list[bytes] | None:
        """Read a whole chunk of raw (codec ``none``) blocks straight into ``outs`` with one ``preadv``, no
        intermediate copy; verifies the checksums and returns them. None when the chunk is not laid out that way."""
        where = f"chunk {chunk} of {key} in {self.path}"
        step = outs[0].nbytes + (4 if checksum else 0)
        crcs = [bytearray(4) for _ in outs] if checksum else []
        with self._open_chunk(key, chunk, len(outs), index_size(len(outs)) + step * len(outs)) as (fd, entries):
            if any(e != (i * step, step) for i, e in enumerate(entries)):
                return None
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
        return [bytes(c) for c in crcs]

    def _put(self, rel: str, data: bytes | list[Any], *, durable: bool) -> None:
        target = self.root / rel
        tmp = _tmp_path(target)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, [data] if isinstance(data, bytes) else data)
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
            fsync_dir(target.parent)

    def _put_direct(self, rel: str, parts: list[Any], *, durable: bool) -> bool:
        """:meth:`_put` with the temp file written by ``O_DIRECT`` (:mod:`._direct`); False, nothing written and
        ``direct_io`` off for this writer (with a warning) where the filesystem refuses it."""
        target = self.root / rel
        tmp = _tmp_path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not _direct.write_file(tmp, parts, durable=durable):
            self._direct = False
            warnings.warn(f"the filesystem of {self.root} refuses O_DIRECT: StoreConfig.direct_io is off for this "
                          "writer (chunk files go through the page cache)", RuntimeWarning, stacklevel=3)
            return False
        os.replace(tmp, target)
        if durable:
            fsync_dir(target.parent)
        return True

    def stored_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file() and not p.name.startswith("."))

    def check_array_docs(self, record: Record) -> list[tuple[str, str]]:
        """Every field of each array's ``zarr.json`` (what plain zarr-python and tensorstore read by) against the
        record."""
        return check_zarr_array_docs(self.root, record)

    def leftover_temp_files(self) -> list[Path]:
        return [p for p in self.root.rglob(".*.tmp") if p.is_file() and not p.is_symlink()]



def interrupted_create(root: Path) -> bool:
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


def _tmp_path(target: Path) -> Path:
    """A unique hidden temp file beside ``target``, renamed onto it once written."""
    return target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
