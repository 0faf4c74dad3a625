"""Chunk state of the writer thread: per array, the chunk being filled, its encoded blocks and NaN/Inf counts.

The writer thread copies appended rows into a :class:`ChunkBuffer` per array; every chunk that fills up, and at a
commit the partly filled one, becomes a :class:`ChunkJob` that the encode pool turns into blocks
(:func:`encode_chunk`); the crc32c of each full block is kept for the block sums of the next commit
(:mod:`actstore.read._blocksums`). :func:`read_rows` and :func:`load_chunk` read rows back for a resume or a rollback,
through the reader's block primitive (:class:`~actstore.read._blocks.ArrayReader`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from ..format._codec import BlockCodec, Buffer
from ..read._blocks import ArrayReader, BlockCache
from ..storage._backend import Backend
from ._nonfinite import NonfiniteCounts

__all__ = ["ChunkBuffer", "ChunkJob", "encode_block", "encode_chunk", "load_chunk", "read_rows"]


@dataclass
class ChunkJob:
    """One whole or partial chunk handed to the encode/write pool."""

    key: str
    chunk: int
    buf: np.ndarray
    """(chunk_rows, width) storage rows; rows >= ``fill`` are ignored."""
    fill: int
    cached: list[list[Buffer] | None]
    """Encoded blocks known to be final (from an earlier partial flush of the same chunk)."""
    final: bool
    """True when the chunk is full and the buffer is no longer needed afterwards."""
    unchecked: np.ndarray | None = None
    """Per block: True when it holds rows to count for NaN/Inf (None: every block; see ``ChunkBuffer.unchecked``)."""
    borrowed: bool = False
    """``buf`` is a view of the appended rows themselves (a whole chunk inside one append, encoded without a copy),
    not a chunk buffer: never recycled, and the append's ``done`` waits for the job."""


@dataclass
class ChunkBuffer:
    """One array (acts, row table, cond or sample column) as the writer thread appends to it: the partly filled
    chunk, its blocks already encoded, the NaN/Inf counts and spare chunk buffers."""

    key: str
    width: int
    dtype: np.dtype
    codec: BlockCodec
    chunk_rows: int
    block_rows: int
    n_rows: int = 0
    """Rows appended so far (all of them, committed or not)."""
    buf: np.ndarray | None = None
    encoded: list[list[Buffer] | None] = field(default_factory=list)
    """Encoded blocks of the current chunk that are full and were already encoded (reused by later flushes)."""
    flushed_fill: int = 0
    """``fill`` at the last partial flush of the current chunk (nothing to flush while unchanged)."""
    logical: str | None = None
    """Activation dtype name (``bfloat16``, ``float32``...) when non-finite values are counted, else None."""
    counts: NonfiniteCounts | None = None
    """The NaN/Inf counts of the encoded blocks (set from ``logical``)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    free: list[np.ndarray] = field(default_factory=list)
    """Chunk buffers whose jobs finished, reused to avoid page-faulting fresh memory for every chunk."""
    block_crcs: dict[int, int] = field(default_factory=dict)
    """crc32c of the encoded bytes of each full block (by absolute block index) not yet in the block sums."""
    unchecked: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    """Per block of the current chunk: True once it holds a row that no caller checked for NaN/Inf (``append(...,
    finite=True)``: a capture checks on the GPU), so the encode threads count it. Never cleared within a chunk:
    rows rewound and appended again, or read back from the store, are counted."""

    def __post_init__(self) -> None:
        if self.logical is not None and self.counts is None:
            self.counts = NonfiniteCounts(self.logical, self.block_rows)

    @property
    def n_blocks(self) -> int:
        return self.chunk_rows // self.block_rows

    @property
    def fill(self) -> int:
        return self.n_rows % self.chunk_rows

    def new_buffer(self) -> np.ndarray:
        try:
            return self.free.pop()
        except IndexError:
            return np.empty((self.chunk_rows, self.width), dtype=self.dtype)

    @property
    def nonfinite(self) -> int:
        """NaN/Inf values in every block encoded so far (committed or not)."""
        return 0 if self.counts is None else self.counts.total()

    def resume_counts(self, committed: int) -> None:
        """After :func:`load_chunk` of a resumed array: its committed rows hold ``committed`` NaN/Inf values."""
        if self.counts is None:
            return
        fill, br = self.fill, self.block_rows
        partial = (self.buf[fill - fill % br : fill] if self.buf is not None
                   else np.empty((0, self.width), dtype=self.dtype))
        self.counts.resume(committed, self.n_rows, partial)

    def recycle(self, job: ChunkJob) -> None:
        """Called when a final job is done with its buffer."""
        if job.final and not job.borrowed and len(self.free) < 2:
            self.free.append(job.buf)

    def add(self, rows: np.ndarray, *, finite: bool = False, borrow: bool = False) -> list[ChunkJob]:
        """Copy ``rows`` in (``finite``: checked for NaN/Inf by the caller); return the jobs for chunks that became
        full. With ``borrow``, a whole chunk that lies inside ``rows`` (C-contiguous, of the array's dtype) is not
        copied: its job borrows the rows (:attr:`ChunkJob.borrowed`), which the caller must leave untouched until
        the job is done."""
        jobs: list[ChunkJob] = []
        start = 0
        n = rows.shape[0]
        borrow = borrow and rows.dtype == self.dtype and rows.flags.c_contiguous
        while start < n:
            if self.buf is None and self.fill == 0 and borrow and n - start >= self.chunk_rows:  # the writer thread's copy, saved
                chunk = self.n_rows // self.chunk_rows
                jobs.append(ChunkJob(self.key, chunk, rows[start : start + self.chunk_rows], self.chunk_rows, [],
                                     final=True, unchecked=np.full(self.n_blocks, not finite), borrowed=True))
                self.n_rows += self.chunk_rows
                start += self.chunk_rows
                continue
            if self.buf is None:
                self.buf = self.new_buffer()
                self.encoded = [None] * self.n_blocks
                self.unchecked = np.zeros(self.n_blocks, dtype=bool)
                self.flushed_fill = 0
            fill = self.fill
            take = min(n - start, self.chunk_rows - fill)
            self.buf[fill : fill + take] = rows[start : start + take]
            if not finite and take:
                self.unchecked[fill // self.block_rows : (fill + take - 1) // self.block_rows + 1] = True
            self.n_rows += take
            start += take
            if self.fill == 0:  # the chunk just filled up
                chunk = self.n_rows // self.chunk_rows - 1
                jobs.append(ChunkJob(self.key, chunk, self.buf, self.chunk_rows, self.encoded, final=True,
                                     unchecked=self.unchecked))
                self.buf = None
                self.encoded = []
        return jobs

    def partial_job(self) -> ChunkJob | None:
        """A job that writes the partly filled current chunk, or None when there is nothing new."""
        fill = self.fill
        if self.buf is None or fill == 0 or fill == self.flushed_fill:
            return None
        self.flushed_fill = fill
        chunk = self.n_rows // self.chunk_rows
        return ChunkJob(self.key, chunk, self.buf, fill, self.encoded, final=False, unchecked=self.unchecked.copy())

    def rewind(self, n_rows: int) -> None:
        """Forget rows ``>= n_rows`` that are still in the buffered chunk."""
        self.n_rows = n_rows
        first_dirty = (n_rows % self.chunk_rows) // self.block_rows
        for i in range(first_dirty, len(self.encoded)):
            self.encoded[i] = None
        self.flushed_fill = -1  # the on-disk partial chunk may hold the forgotten rows: rewrite it

    def record_crc(self, block_index: int, crc: Buffer) -> None:
        with self.lock:
            self.block_crcs[block_index] = int.from_bytes(bytes(crc), "little")


def encode_block(job: ChunkJob, array: ChunkBuffer, block: int) -> list[Buffer] | None:
    """Encode block ``block`` of a job (its NaN/Inf counted first); a partly filled block is zero-padded; an empty
    one is absent."""
    codec, block_rows = array.codec, array.block_rows
    lo = block * block_rows
    if lo >= job.fill:
        return None
    cached = job.cached[block] if block < len(job.cached) else None
    if cached is not None:
        return cached
    hi = lo + block_rows
    absolute = job.chunk * array.n_blocks + block
    unchecked = job.unchecked is None or bool(job.unchecked[block])
    if hi <= job.fill:
        if array.counts is not None:
            array.counts.record(absolute, job.buf[lo:hi] if unchecked else None, block_rows)
        blob = codec.encode_parts(job.buf[lo:hi])
        if codec.checksum:
            array.record_crc(absolute, blob[-1])
        if job.cached:
            job.cached[block] = blob  # a full block never changes again
        return blob
    padded = np.zeros((block_rows, job.buf.shape[1]), dtype=job.buf.dtype)
    padded[: job.fill - lo] = job.buf[lo : job.fill]
    if array.counts is not None:
        array.counts.record(absolute, padded if unchecked else None, job.fill - lo)
    return codec.encode_parts(padded)


def encode_chunk(job: ChunkJob, array: ChunkBuffer) -> list[list[Buffer] | None]:
    """All blocks of a job, encoded in this thread (one task per chunk keeps thread hand-offs few).

    Each block is NaN/Inf-counted right before its encode, which then finds it in cache. (One count over all the
    new blocks of a chunk gives the GIL up fewer times, faster while a pure-Python thread is busy, but leaves the
    encodes a colder cache and was slower otherwise: docs/benchmarks.md, NaN/Inf accounting.)"""
    return [encode_block(job, array, b) for b in range(array.n_blocks)]


def _reader(be: Backend, array: ChunkBuffer, n_rows: int) -> ArrayReader:
    return ArrayReader(be, array.key, array.width, array.dtype, array.codec, array.chunk_rows, array.block_rows,
                       n_rows, BlockCache(0))


def read_rows(be: Backend, array: ChunkBuffer, start: int, count: int) -> np.ndarray:
    """Rows ``[start, start + count)`` of ``array`` read back from the store. Every block of them must be on disk:
    an absent one is a :class:`CorruptStoreError`, never zeros."""
    return _reader(be, array, start + count).read_range(start, start + count)


def load_chunk(be: Backend, array: ChunkBuffer, n_rows: int) -> None:
    """Set ``array`` to its first ``n_rows`` rows (a resume, or a rollback into a chunk no longer buffered): the
    rows of its last, partly filled chunk are read back into the buffer, and the full blocks among them keep their
    stored bytes (they are never encoded again: their block sums must stay true)."""
    array.buf, array.encoded, array.n_rows = None, [], n_rows
    fill = n_rows % array.chunk_rows
    if not fill:
        return
    chunk, br = n_rows // array.chunk_rows, array.block_rows
    reader = _reader(be, array, n_rows)
    blobs = be.read_chunk(array.key, chunk, array.n_blocks)
    array.buf = array.new_buffer()
    array.encoded = [None] * array.n_blocks
    array.unchecked = np.ones(array.n_blocks, dtype=bool)  # read back: counted when encoded again
    for i in range(-(-fill // br)):
        reader.decode_block(blobs[i], chunk * array.n_blocks + i, array.buf[i * br : (i + 1) * br])
        if (i + 1) * br <= fill:
            array.encoded[i] = [bytes(blobs[i])]  # type: ignore[arg-type]
    array.flushed_fill = fill
