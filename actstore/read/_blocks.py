"""Reading rows of one stored array: whole chunks or single blocks, decoded concurrently, with a block cache.

:meth:`ArrayReader.decode_block` is the one place a stored block is decoded and checked (present, its crc32c, its
size, and its block sum, :mod:`actstore.read._blocksums`): every read path of the reader, the writer's read-back on
resume and rollback, and ``verify`` go through it."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._errors import CorruptStoreError
from ..format._codec import BlockCodec
from ..format._record import Layout
from ..storage._storage import Backend, max_chunk_bytes
from ._blocksums import ENTRIES, BlockSums, has_sums, sums_key

__all__ = ["ArrayReader", "BlockCache", "decode_pool", "open_array", "open_sums_array"]

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool_after_fork() -> None:
    """A forked child (a DataLoader worker) inherits the pool object but not its threads: start afresh."""
    global _POOL, _POOL_LOCK
    _POOL = None
    _POOL_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def decode_pool() -> ThreadPoolExecutor:
    """The process-wide pool that reads and decodes blocks (the codecs release the GIL)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="actstore-dec")
        return _POOL


class BlockCache:
    """LRU of decoded blocks, bounded in bytes, shared by the arrays of one store."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[tuple[str, str, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int]) -> np.ndarray | None:
        with self._lock:
            arr = self._data.get(key)
            if arr is not None:
                self._data.move_to_end(key)
            return arr

    def put(self, key: tuple[str, str, int], arr: np.ndarray) -> None:
        if arr.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._data:
                return
            self._data[key] = arr
            self._bytes += arr.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._data.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


class ArrayReader:
    """Rows ``[0, n_rows)`` of one array, as storage-dtype numpy."""

    SMALL = 8
    """Reads touching at most this many blocks go through the cache."""

    def __init__(
        self,
        backend: Backend,
        key: str,
        width: int,
        dtype: np.dtype,
        codec: BlockCodec,
        chunk_rows: int,
        block_rows: int,
        n_rows: int,
        cache: BlockCache,
        sums: BlockSums | None = None,
        *,
        stable_reads: bool = False,
    ) -> None:
        self.backend = backend
        self.key = key
        self.width = width
        self.dtype = np.dtype(dtype)
        self.codec = codec
        self.chunk_rows = chunk_rows
        self.block_rows = block_rows
        self.per_chunk = chunk_rows // block_rows
        self.n_rows = n_rows
        self.cache = cache
        self.stable_reads = stable_reads
        """Whether small reads of full, committed chunks may come from files the backend keeps open (a store's
        readers; not the writer's read-back, which rewrites chunks it read)."""
        self.sums = sums
        """The block sums each decoded block is checked against (None: a store written without them)."""
        block_bytes = block_rows * width * self.dtype.itemsize
        self._bound = {"max_bytes": max_chunk_bytes(self.per_chunk, block_bytes)}
        """Chunk files are bounded by what their blocks can take: a crafted size is refused before it is read
        (backends that do not read chunk files ignore it)."""

    # ------------------------------------------------------------------------------------ primitives
    def _where(self, block: int) -> str:
        return f"block {block} (chunk {block // self.per_chunk}) of {self.key} in {self.backend.path}"

    def decode_block(self, blob: bytes | memoryview | None, block: int, out: np.ndarray, *,
                     hold_gil: bool = False) -> None:
        """Decode stored block ``block`` (its encoded bytes ``blob``) into ``out``, or raise
        :class:`CorruptStoreError`. Every block a reader decodes holds committed rows: one its chunk's index calls
        absent is corruption (the writer writes each block before the commit that covers it), not zeros."""
        if blob is None:
            raise CorruptStoreError(f"{self._where(block)} is absent from its chunk's index although committed rows "
                                    f"(up to row {self.n_rows}) lie in it")
        self.codec.decode(blob, out, where=self._where(block), hold_gil=hold_gil)
        if self.sums is not None:
            self._check_sum(block, bytes(blob[-4:]), out)

    def _check_sum(self, block: int, trailing: bytes, out: np.ndarray) -> None:
        """``out`` must be the block its block sum names. The entry may have been read after the block, and a live
        writer may have completed the block and written its new entry in between: a mismatch is read again, the
        entry first, then the block, before it is reported."""
        assert self.sums is not None
        if self.sums.matches(block, trailing, out):
            return
        self.sums.matches(block, None, out, fresh=True)  # re-read the entry (before the block, this time)
        blob = self.backend.read_block(self.key, block, self.per_chunk, **self._bound)
        if blob is not None:
            self.codec.decode(blob, out, where=self._where(block))
            if self.sums.matches(block, bytes(blob[-4:]), out):
                return
        raise self.sums.mismatch(block, self._where(block))

    def _fetch_block(self, block: int, out: np.ndarray) -> None:
        """One block for a small read: decoded holding the GIL (cheaper than handing it over and back); from a
        chunk file the backend may keep open when the chunk no longer changes (full, every row committed)."""
        chunk = block // self.per_chunk
        if self.stable_reads and (chunk + 1) * self.chunk_rows <= self.n_rows:
            blob = self.backend.read_stable_block(self.key, block, self.per_chunk, **self._bound)
        else:
            blob = self.backend.read_block(self.key, block, self.per_chunk, **self._bound)
        self.decode_block(blob, block, out, hold_gil=True)

    def block(self, block: int) -> np.ndarray:
        """One decoded block (cached)."""
        hit = self.cache.get((self.backend.path, self.key, block))
        if hit is not None:
            return hit
        out = np.empty((self.block_rows, self.width), dtype=self.dtype)
        self._fetch_block(block, out)
        self.cache.put((self.backend.path, self.key, block), out)
        return out

    def read_chunk_into(self, chunk: int, out: np.ndarray) -> None:
        """Decode every row of a full ``chunk`` into ``out`` (chunk_rows x width)."""
        first = chunk * self.chunk_rows
        self.read_chunk_rows(chunk, np.arange(first, first + self.chunk_rows), out)

    # ---------------------------------------------------------------------------------------- chunks
    def chunk_index(self, rows: np.ndarray) -> np.ndarray:
        """The chunk holding each row."""
        return rows // self.chunk_rows

    def read_chunk_rows(self, chunk: int, ids: np.ndarray, out: np.ndarray) -> None:
        """Rows ``ids`` (all in ``chunk``) into ``out``, reading the chunk file once; a whole chunk in order is
        decoded block by block straight into ``out``, otherwise only the blocks holding ``ids`` are decoded."""
        first, br = chunk * self.per_chunk, self.block_rows
        local = ids - chunk * self.chunk_rows
        whole = local.size == self.chunk_rows and local[0] == 0 and local[-1] == self.chunk_rows - 1
        if whole and self.codec.name == "none":
            outs = [out[i * br : (i + 1) * br] for i in range(self.per_chunk)]
            crcs = self.backend.read_raw_blocks(self.key, chunk, outs, self.codec.checksum)  # zero-copy into ``out``
            if crcs is not None:
                if self.sums is not None:
                    for i, crc in enumerate(crcs):
                        self._check_sum(first + i, crc, outs[i])
                return
        blobs = self.backend.read_chunk(self.key, chunk, self.per_chunk, scratch=True, **self._bound)
        if whole:
            for i, blob in enumerate(blobs):
                self.decode_block(blob, first + i, out[i * br : (i + 1) * br])
            return
        blocks = local // br
        tmp = np.empty((br, self.width), dtype=self.dtype)
        for b in np.unique(blocks):
            sel = np.flatnonzero(blocks == b)
            self.decode_block(blobs[int(b)], first + int(b), tmp)
            out[sel] = tmp[local[sel] - int(b) * br]

    # ------------------------------------------------------------------------------------------- reads
    def _alloc(self, n: int) -> np.ndarray:
        """The result of a read of ``n`` rows; a count no memory can hold (a forged commit record) is corruption."""
        try:
            return np.empty((n, self.width), dtype=self.dtype)
        except (MemoryError, ValueError):
            raise CorruptStoreError(f"{self.key} in {self.backend.path}: {n} rows x {self.width} cannot be read into "
                                    f"memory; the commit record says {self.n_rows} rows, more than any store holds") from None

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)``; whole blocks decode straight into the result."""
        out = self._alloc(max(0, stop - start))
        if stop <= start:
            return out
        b0, b1 = start // self.block_rows, (stop - 1) // self.block_rows + 1
        if b1 - b0 <= self.SMALL:
            for b in range(b0, b1):
                self._copy_block(self.block(b), b, start, stop, out)
            return out

        def work(chunk: int, blocks: range) -> None:  # one task per chunk: one file read, its blocks decoded
            blobs = self._chunk_blobs(chunk, blocks)
            tmp = None
            for b in blocks:
                lo, hi = b * self.block_rows, (b + 1) * self.block_rows
                if lo >= start and hi <= stop:
                    self.decode_block(blobs[b], b, out[lo - start : hi - start])
                else:
                    tmp = np.empty((self.block_rows, self.width), dtype=self.dtype) if tmp is None else tmp
                    self.decode_block(blobs[b], b, tmp)
                    self._copy_block(tmp, b, start, stop, out)

        jobs = []
        for chunk in range(b0 // self.per_chunk, (b1 - 1) // self.per_chunk + 1):
            blocks = range(max(b0, chunk * self.per_chunk), min(b1, (chunk + 1) * self.per_chunk))
            jobs.append(decode_pool().submit(work, chunk, blocks))
        for f in jobs:
            f.result()
        return out

    def _chunk_blobs(self, chunk: int, blocks: Iterable[int]) -> dict[int, bytes | memoryview | None]:
        """Encoded blocks of one chunk: the whole file in one read when many of its blocks are wanted."""
        wanted = list(blocks)
        if len(wanted) * 4 > self.per_chunk:
            blobs = self.backend.read_chunk(self.key, chunk, self.per_chunk, scratch=True, **self._bound)
            first = chunk * self.per_chunk
            return {b: blobs[b - first] for b in wanted}
        return {b: self.backend.read_block(self.key, b, self.per_chunk, **self._bound) for b in wanted}

    def _copy_block(self, data: np.ndarray, b: int, start: int, stop: int, out: np.ndarray) -> None:
        lo = max(start, b * self.block_rows)
        hi = min(stop, (b + 1) * self.block_rows)
        out[lo - start : hi - start] = data[lo - b * self.block_rows : hi - b * self.block_rows]

    def read_rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows at ``idx`` (any order, repeats allowed, all in range); each touched block is decoded once."""
        out = self._alloc(idx.shape[0])
        if idx.size == 0:
            return out
        blocks = idx // self.block_rows
        uniq, inverse = np.unique(blocks, return_inverse=True)
        if uniq.size <= self.SMALL:
            for j, b in enumerate(uniq):
                sel = np.nonzero(inverse == j)[0]
                out[sel] = self.block(int(b))[idx[sel] - b * self.block_rows]
            return out
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(uniq.size + 1))
        chunk_of = uniq // self.per_chunk
        cuts = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1], True])

        def work(j0: int, j1: int) -> None:  # the touched blocks of one chunk
            chunk = int(chunk_of[j0])
            blobs = self._chunk_blobs(chunk, (int(b) for b in uniq[j0:j1]))
            tmp = np.empty((self.block_rows, self.width), dtype=self.dtype)
            for j in range(j0, j1):
                b = int(uniq[j])
                sel = order[bounds[j] : bounds[j + 1]]
                self.decode_block(blobs[b], b, tmp)
                out[sel] = tmp[idx[sel] - b * self.block_rows]

        jobs = [decode_pool().submit(work, int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        for f in jobs:
            f.result()
        return out


def open_array(be: Backend, layout: Layout, key: str, width: int, dtype: np.dtype, n_rows: int,
               cache: BlockCache) -> ArrayReader:
    """The reader of array ``key`` of a store with ``layout`` (its record's), checking block sums where the store
    keeps them for this array."""
    dtype = np.dtype(dtype)
    br = layout.block_rows
    codec = BlockCodec(layout.codec, dtype, checksum=be.checksums, block_bytes=br * width * dtype.itemsize)
    sums = BlockSums(be, key, br, n_rows) if layout.blocksums and has_sums(key) else None
    return ArrayReader(be, key, width, dtype, codec, layout.chunk_rows, br, n_rows, cache, sums,
                       stable_reads=has_sums(key))  # schema arrays: a full chunk never changes (row stats do)


def open_sums_array(be: Backend, layout: Layout, key: str, n_rows: int) -> ArrayReader:
    """The reader of the block-sums array of array ``key`` at ``n_rows`` committed rows (one entry per block)."""
    u4 = np.dtype("<u4")
    n = -(-n_rows // layout.block_rows)
    return ArrayReader(be, sums_key(key), 2, u4, BlockCodec("none", u4), ENTRIES, ENTRIES, n, BlockCache(0))


class ConcatReader:
    """Several :class:`ArrayReader` (the parts of a multi-process store) read as one array, in order."""

    def __init__(self, parts: list[ArrayReader], width: int, dtype: np.dtype, chunk_rows: int) -> None:
        self.parts = parts
        self.width = width
        self.dtype = np.dtype(dtype)
        self.chunk_rows = chunk_rows
        self.block_rows = parts[0].block_rows if parts else chunk_rows
        self.key = parts[0].key if parts else ""
        self.offsets = np.cumsum([0] + [p.n_rows for p in parts]).astype(np.int64)
        self.n_rows = int(self.offsets[-1])
        # chunks of all parts, in order: (part, local chunk) and the global row each starts at
        self._chunks = [(p, c) for p, part in enumerate(parts) for c in range(-(-part.n_rows // part.chunk_rows))]
        self._chunk_starts = np.array(
            [int(self.offsets[p]) + c * parts[p].chunk_rows for p, c in self._chunks], dtype=np.int64
        )

    def chunk_index(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._chunk_starts, rows, side="right") - 1

    def read_chunk_rows(self, chunk: int, ids: np.ndarray, out: np.ndarray) -> None:
        p, c = self._chunks[chunk]
        self.parts[p].read_chunk_rows(c, ids - self.offsets[p], out)

    def read_range(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(0, stop - start), self.width), dtype=self.dtype)
        for p, part in enumerate(self.parts):
            lo, hi = max(start, int(self.offsets[p])), min(stop, int(self.offsets[p + 1]))
            if lo < hi:
                out[lo - start : hi - start] = part.read_range(lo - int(self.offsets[p]), hi - int(self.offsets[p]))
        return out

    def read_rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((idx.shape[0], self.width), dtype=self.dtype)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        for p, part in enumerate(self.parts):
            sel = np.nonzero(which == p)[0]
            if sel.size:
                out[sel] = part.read_rows(idx[sel] - self.offsets[p])
        return out
