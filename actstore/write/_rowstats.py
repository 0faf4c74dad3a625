"""Per-chunk statistics of the row tables: the min and max of every column of each row-table chunk.

Written by the writer with each commit (``rowstats/{role}``, one row per row-table chunk: the minimum of every
column, then the maximum of every column, int64), so that a reader can skip the chunks a ``step`` / ``sample``
/ column filter cannot match without reading them. The commit record says how many stats rows are valid
(``commit.row_stats[role]``); a store without them (written before) is read as before, its statistics computed
on demand by the reader. See ``docs/format.md``.

Safety argument: a stats row is always computed from the whole chunk buffer of a job the writer writes (the
rows appended so far, uncommitted ones included). After a rollback or with rows beyond the commit it can only
describe *more* rows than are committed, so its range is a superset: a filter may read a chunk in vain, never
skip one that matches. The next job of that chunk makes it exact again.

Integrity: a filter *skips* the chunks the statistics rule out, so a wrong stats chunk (swapped with another
role's, or another position's, each passing its crc32c) would drop matching rows without a word. The commit
record therefore carries, per stats chunk, the crc32c of its rows for the row-table chunks that are full
(``commit.row_stats_crc32c[role]``; those rows never change again), and the reader checks the statistics against
it before it uses them and never skips the last, partly filled chunk, whose row a live writer rewrites at every
commit (:class:`CheckedStats`).
"""

from __future__ import annotations

import contextlib

import numpy as np

from .._errors import CorruptStoreError
from ..format._codec import BlockCodec, crc32c_of
from ..format._format import rows_key
from ..format._record import Record, RoleSpec
from ..read._stats import chunk_stats, stats_key
from ..storage._backend import Backend
from ._chunks import ChunkBuffer, ChunkJob, encode_chunk, read_rows

__all__ = ["RowStatsWriter"]

_I8 = np.dtype("<i8")


class RowStatsWriter:
    """The writer thread's side: observe row-table chunk jobs, write the stats of changed chunks at a commit."""

    def __init__(self, backend: Backend, record: Record, codec_name: str, chunk_rows: int, block_rows: int) -> None:
        self._be = backend
        self._columns: dict[str, int] = {role: len(spec.columns) for role, spec in record.roles.items()}
        """Row-table columns per role (grows by :meth:`declare`)."""
        self._codec_name = codec_name
        self._chunk_rows = chunk_rows
        self._block_rows = block_rows
        self._committed: dict[str, int] = dict(record.commit.row_stats or {})
        """Stats rows on disk and covered by the last commit, per role."""
        self._dirty: dict[str, dict[int, np.ndarray]] = {}
        """Stats rows computed since the last commit: role -> {row-table chunk: stats row}."""
        self._cached: dict[str, tuple[int, np.ndarray]] = {}
        """The last stats chunk written per role (its index and rows), reused by the next commit."""
        self._off: set[str] = set()
        """Roles whose earlier chunks have no stats (a store written before them, resumed): none recorded."""
        self._created: set[str] = set(self._committed)
        self._seen: set[str] = set()
        self._full_crcs: dict[str, dict[int, int]] = {
            role: {i: c for i, c in enumerate(crcs) if (i + 1) * chunk_rows <= self._committed.get(role, 0)}
            for role, crcs in (record.commit.row_stats_crc32c or {}).items()}
        """Per role: the crc32c of each full stats chunk (``chunk_rows`` stats rows, never rewritten but by a
        rollback), for ``commit.row_stats_crc32c``."""

    def declare(self, role: str, spec: RoleSpec) -> None:
        """A role declared after the writer started."""
        self._columns[role] = len(spec.columns)

    def _role_of(self, key: str) -> str | None:
        for role in self._columns:
            if rows_key(role) == key:
                return role
        return None

    def observe(self, job: ChunkJob) -> None:
        """Called for every chunk job before it is written; only row-table jobs matter."""
        if not job.key.startswith("rows/") or job.fill == 0:
            return
        role = self._role_of(job.key)
        if role is None or role in self._off:
            return
        if role not in self._seen:
            self._seen.add(role)
            if job.chunk > self._committed.get(role, 0):
                self._off.add(role)  # rows committed before this writer have no stats: left to the reader
                return
        self._dirty.setdefault(role, {})[job.chunk] = chunk_stats(job.buf[: job.fill])

    def checksums(self, roles: dict[str, int], row_stats: dict[str, int]) -> dict[str, list[int]]:
        """``commit.row_stats_crc32c`` for the ``row_stats`` that :meth:`flush` returned and the committed row
        counts ``roles``: per role, the crc32c of each stats chunk's rows of full row-table chunks, as stored."""
        out: dict[str, list[int]] = {}
        for role in row_stats:
            n_full = int(roles.get(role, 0)) // self._chunk_rows
            full = self._full_crcs.setdefault(role, {})
            crcs = []
            for s in range(-(-n_full // self._chunk_rows)):
                want = min(self._chunk_rows, n_full - s * self._chunk_rows)
                crc = full.get(s) if want == self._chunk_rows else None
                if crc is None:
                    crc = crc32c_of(self._stats_chunk(role, s, self._buffer(role))[:want])
                    if want == self._chunk_rows:
                        full[s] = crc
                crcs.append(crc)
            out[role] = crcs
        return out

    def flush(self, roles: dict[str, int]) -> dict[str, int]:
        """Write the stats of every changed chunk (before the commit record); return ``commit.row_stats``."""
        out: dict[str, int] = {}
        for role, n_rows in roles.items():
            if role in self._off or role not in self._columns:
                continue
            n_stats = -(-int(n_rows) // self._chunk_rows)
            dirty = self._dirty.pop(role, {})
            if n_stats and max(self._committed.get(role, 0), max(dirty, default=-1) + 1) < n_stats:
                continue  # some committed chunk was never observed: no valid stats (cannot happen in order)
            try:
                if dirty:
                    self._write(role, dirty)
                if n_stats:
                    self._be.set_rows(stats_key(role), n_stats)
            except CorruptStoreError:  # earlier stats not there (e.g. a copy that did not carry them over)
                self._off.add(role)  # left to the reader, which computes them
                continue
            self._committed[role] = n_stats
            out[role] = n_stats
        return out

    # ------------------------------------------------------------------------------------------ writing
    def _buffer(self, role: str) -> ChunkBuffer:
        width = 2 * self._columns[role]
        codec = BlockCodec(self._codec_name, _I8, checksum=self._be.checksums,
                           block_bytes=self._block_rows * width * _I8.itemsize)
        return ChunkBuffer(stats_key(role), width, _I8, codec, self._chunk_rows, self._block_rows)

    def _create(self, role: str, table: ChunkBuffer) -> None:
        if role in self._created:
            return
        # HDF5 refuses (ValueError) a dataset that an earlier writer created before it crashed uncommitted
        with contextlib.suppress(ValueError):
            self._be.create_array(table.key, table.width, table.dtype, table.codec, self._chunk_rows, self._block_rows)
        self._created.add(role)

    def _write(self, role: str, dirty: dict[int, np.ndarray]) -> None:
        table = self._buffer(role)
        self._create(role, table)
        for s in sorted({c // self._chunk_rows for c in dirty}):
            first = s * self._chunk_rows
            rows = self._stats_chunk(role, s, table)
            fill = rows.shape[0]
            for c, stats in dirty.items():
                if c // self._chunk_rows == s:
                    if c - first >= fill:
                        grown = np.zeros((c - first + 1, table.width), dtype=_I8)
                        grown[:fill] = rows
                        rows, fill = grown, c - first + 1
                    rows[c - first] = stats
            buf = np.zeros((self._chunk_rows, table.width), dtype=_I8)
            buf[:fill] = rows
            job = ChunkJob(table.key, s, buf, fill, [], final=False)
            self._be.write_chunk(table.key, s, encode_chunk(job, table), durable=False)
            self._cached[role] = (s, rows)
            self._full_crcs.setdefault(role, {}).pop(s, None)  # recomputed by checksums() from these rows

    def _stats_chunk(self, role: str, s: int, table: ChunkBuffer) -> np.ndarray:
        """The stats rows of stats chunk ``s`` that earlier commits wrote (empty when none), read back like any
        committed rows: an absent block is a :class:`CorruptStoreError` (never zeros, which would be a range that
        lets a filter skip a matching chunk)."""
        cached = self._cached.get(role)
        if cached is not None and cached[0] == s:
            return cached[1].copy()
        first = s * self._chunk_rows
        have = min(self._committed.get(role, 0) - first, self._chunk_rows)
        if have <= 0:
            return np.zeros((0, table.width), dtype=_I8)
        return read_rows(self._be, table, first, have)  # an absent block: CorruptStoreError, stats left to the reader
