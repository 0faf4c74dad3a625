"""The writer thread: handles a :class:`~actstore.write._writer.StoreWriter`'s messages in order, one handler per kind.

It copies appended rows into per-array chunk buffers (:mod:`actstore.write._chunks`), hands every full chunk to a pool
that encodes its blocks and writes it, and writes the commit record.

Commit semantics: data becomes visible to readers (and to a resumed writer) only through the commit record in
the root metadata. A commit is written at a *mark* (every append when ``autocommit``, else every ``commit()``),
at most every ``commit_interval_s``, after every chunk holding the marked rows is on disk; a partly filled chunk
is written whole (rewritten later as it grows, each time atomically). A crash therefore leaves the last commit
intact; rows after it are ignored and overwritten on resume.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..format._codec import BlockCodec
from ..format._format import SAMPLE_KEYS, acts_key, cond_acts_key, cond_rows_key, now_iso, rows_key
from ..format._record import Commit as CommitRecord
from ..format._record import Record, RoleSpec, SamplesSpec, Spec, freeze
from ..read._blocksums import BlockSumsWriter
from ..storage._backend import Backend
from ._chunks import ChunkBuffer, ChunkJob, encode_chunk, load_chunk, read_rows
from ._config import StoreConfig
from ._malloc import keep_blocks_in_heap
from ._messages import Append, Close, Commit, Declare, Done, Flush, IntervalPassed, Mark, Message, Rollback
from ._nonfinite import RowsOf
from ._queue import ByteQueue
from ._rowstats import RowStatsWriter

__all__ = ["WriterThread"]


class WriterThread(threading.Thread):
    """Takes :mod:`actstore.write._messages` from ``queue`` until :class:`Close`.

    The first error raised by a handler is kept in :attr:`error` (the producer re-raises it) and every later
    message is skipped; ``Close`` still ends the thread. Resumed stores' committed partial chunks are read back by
    the constructor, on the caller's thread.
    """

    def __init__(self, backend: Backend, record: Record, config: StoreConfig, queue: ByteQueue[Message], *,
                 resumed: bool) -> None:
        super().__init__(name="actstore-writer", daemon=True)
        keep_blocks_in_heap()  # encoded blocks reuse heap memory, not fresh page-faulted maps
        self.error: BaseException | None = None
        """The first failure, re-raised by the producer as :class:`WriterFailedError`."""
        self.record = record
        """The store's record as last committed, plus the roles / conds / samples declared since (replaced, never
        changed in place)."""
        self._be = backend
        self._config = config
        self._queue = queue
        layout = record.layout
        self._chunk_rows = layout.chunk_rows
        self._block_rows = layout.block_rows
        self._codec_name = layout.codec
        self._arrays: dict[str, ChunkBuffer] = {}
        """The chunk state of every array, by key."""
        self._row_stats = RowStatsWriter(backend, record, self._codec_name, self._chunk_rows, self._block_rows)
        self._sums = (BlockSumsWriter(backend, self._block_rows, {a.key: n for a, n in record.arrays()})
                      if layout.blocksums else None)
        """Writes the block sums at each commit (stores created with them: ``layout.blocksums``)."""
        self._pending: Mark | None = None
        """The last mark not committed yet."""
        self._last_commit = time.monotonic()
        if resumed:
            self._load_committed()
        if config.direct_io and not backend.use_direct_io(True):
            warnings.warn(f"{backend.path}: StoreConfig.direct_io needs a local Zarr store on a platform with O_DIRECT; "
                          "writing through the page cache", RuntimeWarning, stacklevel=3)
        self._workers = config.threads or os.cpu_count() or 2
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="actstore-enc")
        self._inflight: deque[Future[None]] = deque()

    @property
    def nonfinite(self) -> dict[str, int]:
        """NaN/Inf values per array as of the last commit."""
        return dict(self.record.commit.nonfinite or {})

    def committed_sample_ids(self) -> list[int]:
        """The sample ids of the committed rows of the samples table (read back from a resumed store)."""
        n = self.record.commit.samples
        if self.record.samples is None or not n:
            return []
        return [int(s) for s in read_rows(self._be, self._arrays[SAMPLE_KEYS["table"]], 0, n)[:, 0]]

    # ------------------------------------------------------------------------------------------- the loop
    def run(self) -> None:
        """Handle messages in order until :class:`Close`; wake up to write a pending commit when it is due."""
        try:
            while True:
                got = self._queue.get(self._seconds_to_commit())
                message, nbytes = got if got is not None else (IntervalPassed(), 0)
                self._handle(message)
                if isinstance(message, Close):
                    return
                self._queue.release(nbytes)
        finally:
            self._pool.shutdown(wait=True)

    def _seconds_to_commit(self) -> float | None:
        if self._pending is None:
            return None
        return max(0.0, self._config.commit_interval_s - (time.monotonic() - self._last_commit))

    def _handle(self, message: Message) -> None:
        """Handle one message unless an earlier one failed; keep the first error."""
        if self.error is not None:
            if isinstance(message, Append) and message.done is not None:
                with contextlib.suppress(Exception):  # the first error is the one kept
                    message.done()  # the rows are not needed any more: the caller's buffers come back
            return
        try:
            match message:
                case Declare(kind, name, spec):
                    self._declare(kind, name, spec)
                case Append(arrays, done, finite):
                    self._append(arrays, done, finite)
                case Commit(mark):
                    self._mark(mark)
                case Rollback(mark):
                    self._rollback(mark)
                case Flush(mark, done):
                    self._flush(mark, done)
                case Close(mark):
                    self._close(mark)
                case IntervalPassed():
                    self._commit_pending()
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised on the caller's thread
            self.error = exc

    # --------------------------------------------------------------------------------------- the handlers
    def _declare(self, kind: str, name: str, spec: Spec) -> None:
        """Record a new role / cond / samples table in the record and create its arrays."""
        self.record = self.record.with_spec(kind, name, spec)
        if isinstance(spec, RoleSpec):
            self._row_stats.declare(name, spec)
        arrays = spec.arrays() if isinstance(spec, SamplesSpec) else spec.arrays(name)
        for a in arrays:
            array = self._new_array(a.key, a.width, a.dtype, a.logical)
            self._be.create_array(a.key, array.width, array.dtype, array.codec, self._chunk_rows, self._block_rows)
            self._arrays[a.key] = array

    def _append(self, arrays: tuple[tuple[str, np.ndarray], ...], done: Done, finite: bool = False) -> None:
        """Copy the rows into their chunk buffers, submit the chunks that filled up, and tell the caller once the
        rows are no longer needed: at once, or when the last job that borrows them (a whole chunk inside the rows,
        encoded without a copy) is done. Only an append with ``done`` lends its rows: without it the caller has no
        signal of when they are free, so they are copied as soon as the writer thread gets them. ``finite``: the
        caller checked the rows for NaN/Inf, the encode threads need not count them."""
        jobs: list[ChunkJob] = []
        for key, rows in arrays:
            jobs.extend(self._arrays[key].add(rows, finite=finite, borrow=done is not None))
        borrowed = sum(job.borrowed for job in jobs)
        release = _Countdown(borrowed, done) if borrowed and done is not None else None
        if done is not None and release is None:
            done()
        for i, job in enumerate(jobs):
            try:
                self._submit(job, release if job.borrowed else None)
            except BaseException:  # the caller gets its rows back even so (the writer has failed)
                if release is not None:
                    for _ in range(sum(j.borrowed for j in jobs[i + 1 :])):
                        release.one_done()
                raise

    def _mark(self, mark: Mark) -> None:
        """A consistent point: committed now if the interval has passed, else when it does."""
        self._pending = mark
        if time.monotonic() - self._last_commit >= self._config.commit_interval_s:
            self._commit_pending()

    def _rollback(self, mark: Mark) -> None:
        """Forget every row after ``mark``: rewind the buffered chunk, or reload a partial one from disk."""
        self._drain()  # rows of earlier chunks are on disk before any is read back
        for key, array in self._arrays.items():
            target = mark.rows(key)
            if array.n_rows <= target:
                continue
            if self._sums is not None:
                self._sums.rewind(key, target)
            if array.counts is not None:
                array.counts.forget(target, self._rows_of(array))
            start = array.n_rows - array.fill  # first row of the buffered chunk
            if array.buf is not None and target >= start:
                array.rewind(target)
            else:
                load_chunk(self._be, array, target)

    def _flush(self, mark: Mark, done: threading.Event) -> None:
        """Commit ``mark`` now and release the waiting caller (also when the commit fails)."""
        try:
            self._pending = mark
            self._commit_pending()
        finally:
            done.set()

    def _close(self, mark: Mark | None) -> None:
        """The final commit (of ``mark``, else of a mark still pending), then wait for every write."""
        if mark is not None:
            self._pending = mark
        self._commit_pending()
        self._drain()

    # ----------------------------------------------------------------------------------- chunks and commits
    def _new_array(self, key: str, width: int, dtype: np.dtype, logical: str | None = None) -> ChunkBuffer:
        dtype = np.dtype(dtype)
        codec = BlockCodec(self._codec_name, dtype, checksum=self._be.checksums,
                           block_bytes=self._block_rows * width * dtype.itemsize)
        if self._config.nonfinite == "allow":
            logical = None
        return ChunkBuffer(key, width, dtype, codec, self._chunk_rows, self._block_rows, logical=logical)

    def _submit(self, job: ChunkJob, release: _Countdown | None = None) -> None:
        """Encode and write one chunk on the pool; wait for the oldest when too many are in flight. ``release`` is
        counted down once when the job is done, failed, or could not be handed to the pool."""
        array = self._arrays[job.key]
        durable = self._config.durable
        try:
            self._row_stats.observe(job)
        except BaseException:
            if release is not None:
                release.one_done()
            raise

        def work() -> None:  # one task per chunk: encode its blocks, write the file, recycle the buffer
            try:
                self._be.write_chunk(job.key, job.chunk, encode_chunk(job, array), durable=durable)
                array.recycle(job)
            finally:
                if release is not None:
                    release.one_done()

        try:
            self._inflight.append(self._pool.submit(work))
        except RuntimeError:  # the interpreter is exiting (pools refuse work): write on this thread
            work()
            return
        limit = 2 * self._workers + 2  # bounded memory: wait for the oldest chunk
        while len(self._inflight) > limit:
            self._inflight.popleft().result()
        while self._inflight and self._inflight[0].done():
            self._inflight.popleft().result()

    def _drain(self) -> None:
        while self._inflight:
            self._inflight.popleft().result()

    def _commit_pending(self) -> None:
        """Write every partial chunk, set each array's row count, the row statistics, then the commit record."""
        mark = self._pending
        if mark is None:
            return
        for array in self._arrays.values():
            job = array.partial_job()
            if job is not None:
                self._submit(job)
        self._drain()
        for role, spec in self.record.roles.items():
            n = mark.roles.get(role, 0)
            self._be.set_rows(rows_key(role), n)
            for e in spec.layers:
                self._be.set_rows(acts_key(role, str(e.layer)), n)
        for name in self.record.conds:
            n = mark.conds.get(name, 0)
            self._be.set_rows(cond_rows_key(name), n)
            self._be.set_rows(cond_acts_key(name), n)
        for key in SAMPLE_KEYS.values():
            if key in self._arrays:
                self._be.set_rows(key, mark.samples)
        if self._sums is not None:  # after every block is on disk, before the record
            self._sums.flush(self._arrays, {k: mark.rows(k) for k in self._arrays}, self._read_back)
        row_stats = self._row_stats.flush(dict(mark.roles))
        counts = {k: a.counts.commit(mark.rows(k), self._rows_of(a)) for k, a in self._arrays.items()
                  if a.counts is not None}
        nonfinite = {k: n for k, n in counts.items() if n}
        if self._config.durable:
            self._be.sync()
        crcs = self._row_stats.checksums(dict(mark.roles), row_stats)
        record = self.record.with_commit(CommitRecord(
            seq=self.record.commit.seq + 1,
            time=now_iso(),
            roles=freeze(mark.roles),
            conds=freeze(mark.conds),
            samples=int(mark.samples),
            progress=freeze(mark.progress),
            nonfinite=freeze(nonfinite),
            row_stats=freeze(row_stats),
            row_stats_crc32c=freeze(crcs),
        ))
        self._be.write_meta(record.seal(), durable=self._config.durable)
        self.record = record  # once written
        self._pending = None
        self._last_commit = time.monotonic()

    def _read_back(self, array: ChunkBuffer, start: int, count: int) -> np.ndarray:
        return read_rows(self._be, array, start, count)

    def _rows_of(self, array: ChunkBuffer) -> RowsOf:
        """Rows ``[start, stop)`` of ``array`` read back from the store (for NaN/Inf counts of committed rows)."""
        return lambda start, stop: self._read_back(array, start, stop - start)

    def _load_committed(self) -> None:
        """A resumed store: every array's chunk state at its committed row count (its partial chunk read back)."""
        for a, n in self.record.arrays():
            array = self._new_array(a.key, a.width, a.dtype, a.logical)
            load_chunk(self._be, array, n)
            array.resume_counts(int((self.record.commit.nonfinite or {}).get(a.key, 0)))
            self._arrays[a.key] = array


class _Countdown:
    """Calls ``done`` once :meth:`one_done` has been called ``n`` times (from any thread)."""

    def __init__(self, n: int, done: Callable[[], None]) -> None:
        self._left, self._done, self._lock = n, done, threading.Lock()

    def one_done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._done()
