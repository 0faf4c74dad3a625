"""``verify``: check a whole store and report every problem found, not only the first.

What is checked, for every array the metadata declares, over the rows the commit record covers:

- every chunk exists, its index passes its crc32c, and every block holding committed rows is present, decodes to
  its size and passes its crc32c (HDF5: the ``crc32c/`` dataset), read through the reader's own block primitive
  (:meth:`~actstore.read._blocks.ArrayReader.decode_block`); on Zarr stores with block sums, every block is the one its
  entry in ``blocksums/`` names (no block swapped or replaced), and the block sums themselves are read;
- on Zarr stores, each array's ``zarr.json`` exists and its shape covers the committed rows (what plain
  zarr-python readers go by);
- the tables agree: every row's ``sample`` is in the samples table, sample ids are unique, steps are ``>= -1``,
  no conditioning (sample, step) appears twice, and every row of a denoising step has its conditioning vector.

Leftover temp files of an interrupted write and NaN/Inf counts are reported as notes, not problems.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .._errors import ActStoreError
from ..format._format import (
    NO_STEP,
    SAMPLE_KEYS,
    cond_rows_key,
    rows_key,
)
from ..format._record import Record
from ..read._blocks import ArrayReader, BlockCache, open_array, open_sums_array
from ..read._blocksums import sums_key
from ..read._reader import ActStore
from ..read._stats import stats_crcs, stats_key
from ..storage._storage import Backend

__all__ = ["Problem", "VerifyReport", "verify"]

_SHOWN = 5
"""Examples listed per consistency problem."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store."""

    array: str | None
    """The array (``acts/decision/14``, ``rows/decision``, ...), or None for the store as a whole."""
    chunk: int | None
    """The chunk index within ``array``, or None when the problem is not about one chunk."""
    message: str
    """What is wrong, naming the values involved."""

    def __str__(self) -> str:
        where = "store" if self.array is None else self.array if self.chunk is None else f"{self.array} chunk {self.chunk}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify`: ``ok`` when ``problems`` is empty."""

    path: str
    problems: tuple[Problem, ...] = ()
    """Every problem found, in the order the arrays were checked."""
    arrays: int = 0
    """Arrays checked."""
    chunks: int = 0
    """Chunks read and decoded."""
    rows: dict[str, int] = field(default_factory=dict)
    """Committed rows per role (and ``cond:<name>``, ``samples``)."""
    notes: tuple[str, ...] = ()
    """Things worth knowing that are not damage (leftover temp files, NaN/Inf counts)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> list[str]:
        """Human-readable lines: a verdict, the counts, then each problem and note."""
        verdict = "OK" if self.ok else f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        counts = ", ".join(f"{k}: {v}" for k, v in self.rows.items()) or "nothing committed"
        lines = [f"{self.path}: {verdict} ({self.arrays} arrays, {self.chunks} chunks checked; {counts})"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return lines


@dataclass
class _Array:
    key: str
    n_rows: int
    open: Callable[[Backend, Record], ArrayReader]
    """The array's reader on a part's backend and record (the one block-read primitive, block sums included)."""
    keep: bool
    """Whether its decoded rows are kept for the table checks (the int tables)."""


def verify(path: str | os.PathLike[str], *, backend: str | None = None) -> VerifyReport:
    """Read every committed chunk of the store at ``path`` and check its tables agree; never raises for a bad
    store (an unreadable one gives a report with a store-level problem)."""
    text = str(path)
    try:
        store = ActStore.open(path, backend=backend, cache_bytes=0)
    except Exception as exc:  # noqa: BLE001 - verify reports, it never raises
        return VerifyReport(text, (Problem(None, None, _describe(exc)),))
    with store:
        try:
            return _Verifier(store).run()
        except Exception as exc:  # noqa: BLE001 - verify reports, it never raises
            return VerifyReport(text, (Problem(None, None, f"verify stopped: {_describe(exc)}"),))


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ActStoreError) else f"{type(exc).__name__}: {exc}"


class _Verifier:
    def __init__(self, store: ActStore) -> None:
        self.store = store
        self.be = store.backend
        self.record = store.record
        self.chunk_rows = self.record.layout.chunk_rows
        self.block_rows = self.record.layout.block_rows
        self.per_chunk = self.chunk_rows // self.block_rows
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.chunks = 0
        self.tables: dict[str, np.ndarray | None] = {}
        """Decoded int tables (rows, cond rows, samples); None where a chunk failed."""

    def run(self) -> VerifyReport:
        """Each part of a multi-part store is checked with its own backend and commit record (a single store is
        its one part); the tables are then checked across all parts, concatenated in part order."""
        n = 0
        parts = list(getattr(self.store, "_parts", []) or [])
        sources = [(be, rec, f"parts/{i:05d}/") for i, (be, rec) in enumerate(parts)] or [(self.be, self.record, "")]
        whole: dict[str, list[np.ndarray | None]] = {}
        for be, record, label in sources:
            self.tables = {}
            self._check_array_docs(be, record, label)
            for arr in self._arrays(record):
                n += 1
                self._check_array(arr, be, record, label)
            for key, table in self.tables.items():
                whole.setdefault(key, []).append(table)
        self.tables = {k: None if any(t is None for t in v) else np.concatenate(v) for k, v in whole.items()}
        self._check_tables()
        self._check_leftovers()
        commit = self.record.commit
        for key, n in (commit.nonfinite or {}).items():
            self.notes.append(f"{key} holds {n} NaN/Inf values (counted at capture time)")
        rows = {r: int(commit.roles.get(r, 0)) for r in self.record.roles}
        rows.update({f"cond:{c}": int(commit.conds.get(c, 0)) for c in self.record.conds})
        rows["samples"] = commit.samples
        return VerifyReport(self.store.path, tuple(self.problems), n, self.chunks, rows, tuple(self.notes))

    # ------------------------------------------------------------------------------------------ arrays
    @staticmethod
    def _arrays(record: Record) -> list[_Array]:
        i8 = np.dtype("<i8")
        layout, cache = record.layout, BlockCache(0)

        def schema(key: str, width: int, dtype: np.dtype, n: int) -> Callable[[Backend, Record], ArrayReader]:
            return lambda be, r: open_array(be, r.layout, key, width, dtype, n, cache)

        out = [_Array(a.key, n, schema(a.key, a.width, a.dtype, n), a.dtype == i8) for a, n in record.arrays()]
        for role, n in (record.commit.row_stats or {}).items():  # per-chunk row statistics (_rowstats)
            if role in record.roles and n > 0:
                width = 2 * len(record.roles[role].columns)
                out.append(_Array(stats_key(role), n, schema(stats_key(role), width, i8, n), True))
        if layout.blocksums:  # the block sums of every schema array (_blocksums)
            out += [_Array(sums_key(a.key), -(-n // layout.block_rows),
                           lambda be, r, key=a.key, n=n: open_sums_array(be, r.layout, key, n), False)
                    for a, n in record.arrays() if n]
        return out

    def _problem(self, arr: str | None, chunk: int | None, message: str) -> None:
        self.problems.append(Problem(arr, chunk, message))

    def _check_array(self, arr: _Array, be: Backend, record: Record, label: str) -> None:
        """Read every committed chunk of ``arr`` through the reader's block primitive: each block present, its
        crc32c, its size and its block sum; a problem per chunk that fails."""
        name = label + arr.key
        reader = arr.open(be, record)
        data = np.zeros((arr.n_rows, reader.width), dtype=reader.dtype) if arr.keep else None
        out = np.empty((reader.chunk_rows, reader.width), dtype=reader.dtype)
        bad = False
        for chunk in range(-(-arr.n_rows // reader.chunk_rows)):
            self.chunks += 1
            lo = chunk * reader.chunk_rows
            hi = min(arr.n_rows, lo + reader.chunk_rows)
            try:
                reader.read_chunk_rows(chunk, np.arange(lo, hi), out[: hi - lo])
            except ActStoreError as exc:
                self._problem(name, chunk, str(exc))
                bad = True
                continue
            if data is not None:
                data[lo:hi] = out[: hi - lo]
        if arr.keep:
            self.tables[arr.key] = None if bad else data

    def _check_array_docs(self, be: Backend, record: Record, label: str) -> None:
        """Every field of each array's own metadata against the record (a Zarr array's zarr.json, what plain
        zarr-python and tensorstore read by; an HDF5 dataset's shape, dtype, chunks, filter and checksum dataset)."""
        for key, message in be.check_array_docs(record):
            self._problem(label + key, None, message)

    def _check_tables(self) -> None:
        record = self.record
        ids: np.ndarray | None = None
        if record.samples is not None:
            table = self.tables.get(SAMPLE_KEYS["table"])
            if table is not None:
                ids = table[:, 0]
                uniq, counts = np.unique(ids, return_counts=True)
                dup = uniq[counts > 1]
                if dup.size:
                    self._problem(SAMPLE_KEYS["table"], None, f"{dup.size} sample ids appear twice, e.g. {dup[:_SHOWN].tolist()}")
        conds: dict[str, np.ndarray] = {}
        for name in record.conds:
            crow = self.tables.get(cond_rows_key(name))
            if crow is None:
                continue
            conds[name] = crow
            pairs = np.unique(crow, axis=0, return_counts=True)
            dup = pairs[0][pairs[1] > 1]
            if dup.size:
                self._problem(cond_rows_key(name), None, f"{len(dup)} (sample, step) pairs appear twice, e.g. {dup[:_SHOWN].tolist()}")
            self._check_samples(cond_rows_key(name), crow[:, 0], ids)
        for role in record.roles:
            key = rows_key(role)
            table = self.tables.get(key)
            if table is None:
                continue
            self._check_row_stats(role, table)
            sample, step = table[:, 0], table[:, 1]
            low = step < NO_STEP
            if low.any():
                self._problem(key, None, f"{int(low.sum())} rows have step < {NO_STEP}, e.g. {step[low][:_SHOWN].tolist()}")
            self._check_samples(key, sample, ids)
            stepped = step >= 0
            for name, crow in conds.items():
                if not stepped.any():
                    continue
                want = np.unique(np.stack([sample[stepped], step[stepped]], axis=1), axis=0)
                lack = ~np.isin(_pair_ids(want), _pair_ids(crow))
                if lack.any():
                    shown = [tuple(p) for p in want[lack][:_SHOWN].tolist()]
                    self._problem(
                        key, None, f"{int(lack.sum())} (sample, step) pairs have no {name!r} conditioning, e.g. {shown}"
                    )

    def _check_row_stats(self, role: str, table: np.ndarray) -> None:
        """Each stored stats row must cover its row-table chunk's committed rows (a superset after a rollback is
        fine; a range that leaves a row out would make a filter skip a chunk that matches)."""
        stats = self.tables.get(stats_key(role))
        if stats is None or getattr(self.store, "_parts", None):  # parts carry no statistics (computed on read)
            return
        crcs = (self.record.commit.row_stats_crc32c or {}).get(role)
        if crcs is not None and stats_crcs(stats[: len(table) // self.chunk_rows], self.chunk_rows) != list(crcs):
            self._problem(stats_key(role), None, "the statistics do not match the crc32c in the commit record "
                                                 "(swapped, replaced or damaged)")
        c = table.shape[1]
        for k in range(min(len(stats), -(-len(table) // self.chunk_rows))):
            rows = table[k * self.chunk_rows:(k + 1) * self.chunk_rows]
            if (stats[k, :c] > rows.min(axis=0)).any() or (stats[k, c:] < rows.max(axis=0)).any():
                self._problem(stats_key(role), k,
                              f"the statistics of row-table chunk {k} do not cover its rows (min/max "
                              f"{stats[k].tolist()} vs {rows.min(axis=0).tolist()} / {rows.max(axis=0).tolist()})")

    def _check_samples(self, key: str, sample: np.ndarray, ids: np.ndarray | None) -> None:
        if ids is None or self.record.samples is None:
            return
        unknown = np.setdiff1d(np.unique(sample), ids)
        if unknown.size:
            self._problem(key, None, f"{unknown.size} sample ids are not in the samples table, e.g. {unknown[:_SHOWN].tolist()}")

    def _check_leftovers(self) -> None:
        tmp = self.be.leftover_temp_files()
        if tmp:
            self.notes.append(
                f"{len(tmp)} temp files of an interrupted write (ignored by readers, safe to delete), e.g. {tmp[0]}"
            )


def _pair_ids(pairs: np.ndarray) -> np.ndarray:
    """(sample, step) rows as one comparable value each."""
    return np.ascontiguousarray(pairs.astype("<i8")).view("V16").reshape(-1)
