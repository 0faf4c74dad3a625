"""Crash-safe HDF5 captures: write into a Zarr staging directory, produce the ``.h5`` from it by atomic rename.

An HDF5 file updated in place is not crash-safe: a SIGKILL between two of h5py's metadata-cache flushes can leave
B-trees and the superblock disagreeing, and the file may not open again. So a writer of ``run.h5`` never updates
``run.h5`` in place. It appends to ``.run.h5.staging.zarr`` beside it (an ordinary actstore Zarr store: every
chunk and every commit is one atomic rename, see ``docs/format.md``) and *publishes*: it copies the committed
blocks as they are (no re-compression; each block's crc32c checked on the way and stored in ``crc32c/{key}``)
into a temporary file, fsyncs it and renames it over ``run.h5``. Publishing happens at ``close()`` and at every
resume; the staging directory is removed after a clean close.

So, whatever moment a writer dies at: ``run.h5`` is either absent (no close or resume yet) or a complete file of
some earlier commit, and the staging directory holds every committed row; ``create(run.h5, resume=True)``
publishes them and continues. All of it runs under the store's lock file ``run.h5.lock``, taken first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import CorruptStoreError, StoreExistsError
from ..format._codec import BlockCodec, crc32c
from ..format._record import Record
from ._files import fsync_dir
from ._h5 import H5Backend
from ._lock import FileLock
from ._storage import Backend
from ._zarr import ZarrDirBackend

__all__ = ["StagedH5Backend", "open_staged", "publish", "staging_path"]


def staging_path(h5: str | os.PathLike[str]) -> Path:
    """The staging directory of ``h5``: hidden, beside it (same filesystem, so the final rename is atomic)."""
    p = Path(h5)
    return p.with_name(f".{p.name}.staging.zarr")


def _has_root(stage: Path) -> bool:
    return (stage / "zarr.json").is_file()


def _blocks_needed(n_rows: int, chunk: int, chunk_rows: int, block_rows: int, per_chunk: int) -> int:
    return min(per_chunk, -(-(n_rows - chunk * chunk_rows) // block_rows))


def _all_arrays(stage: ZarrDirBackend, record: Record) -> list[tuple[str, int, np.dtype, int]]:
    """(key, width, dtype, rows) of every array to publish: the record's, with their committed rows, then any
    other array of the staging store (e.g. derived per-row statistics), with the rows its zarr.json records."""
    out = [(spec.key, spec.width, np.dtype(spec.dtype), n) for spec, n in record.arrays()]
    known = {key for key, *_ in out}
    for doc_path in sorted(stage.root.rglob("zarr.json")):
        key = doc_path.parent.relative_to(stage.root).as_posix()
        if key in known or key == ".":
            continue
        try:
            doc = json.loads(doc_path.read_bytes())
            if doc.get("node_type") != "array":
                continue
            rows, width = (int(x) for x in doc["shape"])
            out.append((key, width, np.dtype(doc["data_type"]), rows))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreError(f"{doc_path} cannot be published: {exc}") from None
    return out


def publish(stage: ZarrDirBackend, h5: Path) -> None:
    """Write the committed state of ``stage`` to ``h5``: a temporary file, fsynced, renamed over ``h5``."""
    raw = stage.read_meta()
    record = Record.parse(raw, str(stage.path))
    layout = record.layout
    chunk_rows, block_rows = layout.chunk_rows, layout.block_rows
    per = chunk_rows // block_rows
    tmp = h5.with_name(f".{h5.name}.{uuid.uuid4().hex}.tmp")
    out = H5Backend(tmp, "w")
    try:
        for key, width, dtype, n in _all_arrays(stage, record):
            out.create_array(key, width, dtype, BlockCodec(layout.codec, dtype, checksum=False), chunk_rows,
                             block_rows)
            out.trim(key, n)  # exact size first: plain h5py sees no padding, HDF5 never prunes a written chunk
            for chunk in range(-(-n // chunk_rows)):
                where = f"chunk {chunk} of {key} in {stage.path}"
                blobs = stage.read_chunk(key, chunk, per)
                blocks: list[Any] = [None] * per
                for i in range(_blocks_needed(n, chunk, chunk_rows, block_rows, per)):
                    blob = blobs[i]
                    if blob is None:
                        raise CorruptStoreError(f"block {i} of {where} is absent although committed rows lie in it")
                    body = bytes(blob[:-4])
                    if len(blob) < 4 or crc32c(body) != bytes(blob[-4:]):
                        raise CorruptStoreError(f"checksum mismatch in block {i} of {where}: not published")
                    blocks[i] = body
                out.write_blocks(key, chunk * per, blocks)
        out.write_meta(raw, durable=True)  # the record exactly as staged (sealed), fsynced with the data
    except BaseException:
        out.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    out.close()
    os.replace(tmp, h5)
    fsync_dir(h5.parent)


def _stage_from_h5(h5: Path, stage: Path) -> None:
    """Rebuild a staging directory from a published ``h5`` (a resume after a clean close): blocks copied as they
    are, each with its crc32c (checked against ``crc32c/{key}`` by the read), the root record written last."""
    src = H5Backend(h5, "r")
    try:
        raw = src.read_meta()
        record = Record.parse(raw, str(h5))
        layout = record.layout
        chunk_rows, block_rows = layout.chunk_rows, layout.block_rows
        per = chunk_rows // block_rows
        stage.mkdir(parents=True)
        dst = ZarrDirBackend(stage)
        for key, width, dtype, n in [(a.key, a.width, np.dtype(a.dtype), n) for a, n in record.arrays()] + \
                src.other_arrays(record):
            codec = BlockCodec(layout.codec, dtype, checksum=True, block_bytes=block_rows * width * dtype.itemsize)
            dst.create_array(key, width, dtype, codec, chunk_rows, block_rows)
            for chunk in range(-(-n // chunk_rows)):
                blocks: list[Any] = [None] * per
                for i in range(_blocks_needed(n, chunk, chunk_rows, block_rows, per)):
                    body = src.read_block(key, chunk * per + i, per)
                    if body is None:
                        raise CorruptStoreError(f"block {chunk * per + i} of {key} in {h5} is absent although "
                                                "committed rows lie in it")
                    blocks[i] = [bytes(body), crc32c(bytes(body))]
                dst.write_chunk(key, chunk, blocks, durable=True)
            dst.set_rows(key, n)
        dst.write_meta(raw, durable=True)
    finally:
        src.close()


class StagedH5Backend(Backend):
    """The writer's backend for ``run.h5``: a :class:`ZarrDirBackend` on the staging directory that publishes the
    ``.h5`` on ``close()``. Holds the store's lock (``run.h5.lock``) from creation to close."""

    checksums = True

    def __init__(self, h5: Path, stage: ZarrDirBackend, lock: FileLock) -> None:
        self.path = str(h5)
        self.h5 = h5
        self.stage = stage
        self.root = stage.root
        """The staging directory (its array documents are checked on resume like any Zarr store's)."""
        self._lock: FileLock | None = lock

    def read_meta(self) -> Any:
        return self.stage.read_meta()

    def write_meta(self, meta: dict[str, Any], *, durable: bool) -> None:
        self.stage.write_meta(meta, durable=durable)

    def create_array(self, key: str, width: int, dtype: np.dtype, codec: BlockCodec, chunk_rows: int,
                     block_rows: int) -> None:
        self.stage.create_array(key, width, dtype, codec, chunk_rows, block_rows)

    def set_rows(self, key: str, n_rows: int) -> None:
        self.stage.set_rows(key, n_rows)

    def write_chunk(self, key: str, chunk: int, blocks: list[Any], *, durable: bool) -> None:
        self.stage.write_chunk(key, chunk, blocks, durable=durable)

    def read_chunk(self, key: str, chunk: int, n_blocks: int, *, scratch: bool = False,
                   max_bytes: int | None = None) -> list[Any]:
        return self.stage.read_chunk(key, chunk, n_blocks, scratch=scratch, max_bytes=max_bytes)

    def read_block(self, key: str, block: int, n_blocks_per_chunk: int, *, max_bytes: int | None = None) -> Any:
        return self.stage.read_block(key, block, n_blocks_per_chunk, max_bytes=max_bytes)

    def lock(self) -> None:
        """Taken by :func:`open_staged` before anything was created or removed."""

    def sync(self) -> None:
        self.stage.sync()

    def stored_bytes(self) -> int:
        return self.stage.stored_bytes()

    def check_array_docs(self, record: Record) -> list[tuple[str, str]]:
        """The staging directory's array documents against the record (what a resume extends)."""
        return self.stage.check_array_docs(record)

    def close_unpublished(self) -> None:
        """Release the store without publishing (a writer that never started)."""
        if self._lock is not None:
            self.stage.close()
            self._lock.release()
            self._lock = None

    def close(self) -> None:
        """Publish the ``.h5`` from the last commit, remove the staging directory, release the lock. If publishing
        fails the staging directory stays (a resume publishes it) and the error is raised."""
        if self._lock is None:
            return
        try:
            self.stage.close()
            publish(self.stage, self.h5)
            shutil.rmtree(self.stage.root)
        finally:
            self._lock.release()
            self._lock = None


def open_staged(path: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> tuple[StagedH5Backend, bool]:
    """The writer's backend for the HDF5 store at ``path`` and whether it resumes committed rows. The lock comes
    first; then a staging directory left by a killed writer is published (resume) or the ``.h5`` is staged again
    (resume after a clean close), or a new store starts (refusing an existing one unless ``overwrite``)."""
    h5 = Path(path)
    stage = staging_path(h5)
    h5.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{h5}.lock", str(h5))
    try:
        for leftover in h5.parent.glob(f".{h5.name}.*.tmp"):  # a publish killed before its rename
            leftover.unlink()
        if resume and _has_root(stage):
            backend = ZarrDirBackend(stage)
            publish(backend, h5)
            return StagedH5Backend(h5, backend, lock), True
        if resume and h5.exists():
            if stage.exists():  # a staging copy killed before its root record: redo it
                shutil.rmtree(stage)
            _stage_from_h5(h5, stage)
            return StagedH5Backend(h5, ZarrDirBackend(stage), lock), True
        if (h5.exists() or _has_root(stage)) and not overwrite:
            staged = f" (an interrupted capture is staged in {stage})" if _has_root(stage) else ""
            raise StoreExistsError(f"{h5} already exists{staged}; pass resume=True to append or overwrite=True to "
                                   "replace it")
        if stage.exists():
            shutil.rmtree(stage)
        if h5.exists():
            h5.unlink()
        stage.mkdir()
        return StagedH5Backend(h5, ZarrDirBackend(stage), lock), False
    except BaseException:
        lock.release()
        raise

