"""The row index of one role, read chunk by chunk: filters, per-chunk statistics and compact row selections.

Nothing here loads a whole row table. A filter (``step`` / ``sample`` / any integer column in a set of values,
plus an optional ``where`` predicate) is evaluated one row-table chunk at a time; the per-chunk min / max of
every column (written with each commit, :mod:`actstore.write._rowstats`, or computed on demand for older stores)
lets it skip the chunks that cannot match. The result is a :class:`Selection`: for each chunk holding selected
rows, its count and, when only some of its rows are selected, a bitmask (one bit per row of that chunk). Its
memory is O(chunks) plus ``chunk_rows / 8`` bytes per partly selected chunk, whatever the number of rows.

``where`` callables receive one chunk's rows at a time (a :class:`RowTable` of that chunk) and must work row by
row (``r["position"] < 4``, ``np.isin(r["task"], ...)``), not on aggregates of the whole table.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import ConfigError, StoreIndexError, UnknownKeyError

__all__ = ["RowIndex", "RowTable", "Selection", "chunk_bounds"]

RowFilter = Callable[[dict[str, np.ndarray]], np.ndarray]
_I8 = np.dtype("<i8")


class RowTable(dict):  # type: ignore[type-arg]
    """A row table (column name -> int64 numpy array); an unknown column raises :class:`UnknownKeyError` (a
    ``KeyError``) naming the columns, so a typo in a ``where`` predicate says what exists."""

    def __init__(self, columns: dict[str, np.ndarray], what: str) -> None:
        super().__init__(columns)
        self.what = what

    def __missing__(self, key: object) -> np.ndarray:
        raise UnknownKeyError(f"no column {key!r} in {self.what}; columns are {list(self)}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (RowTable, (dict(self), self.what))


def chunk_bounds(reader: Any) -> np.ndarray:
    """First row of every chunk of an array reader, then its row count (int64, ``n_chunks + 1`` entries). A
    reader of several parts (``ConcatReader``) has irregular chunks: each part's last one may be short."""
    parts = getattr(reader, "parts", None)
    if parts is None:
        starts = np.arange(0, reader.n_rows, reader.chunk_rows, dtype=np.int64)
    else:
        starts = np.concatenate([np.zeros(0, np.int64)] + [
            int(reader.offsets[p]) + np.arange(0, part.n_rows, part.chunk_rows, dtype=np.int64)
            for p, part in enumerate(parts)
        ])
    return np.r_[starts, np.int64(reader.n_rows)].astype(np.int64)


@dataclass(frozen=True, eq=False)
class Selection:
    """Rows of a role chosen chunk by chunk, in ascending row order."""

    bounds: np.ndarray
    """Chunk boundaries of the role (``chunk_bounds``)."""
    chunks: np.ndarray
    """Ids of the chunks holding selected rows, ascending."""
    counts: np.ndarray
    """Selected rows of each of those chunks."""
    mask_of: np.ndarray
    """Row of ``masks`` of each chunk, or -1 when every row of the chunk is selected."""
    masks: np.ndarray
    """Packed bits (``np.packbits``), one row per partly selected chunk."""

    @classmethod
    def all(cls, bounds: np.ndarray) -> Selection:
        n = bounds.size - 1
        return cls(bounds, np.arange(n, dtype=np.int64), np.diff(bounds), np.full(n, -1, np.int64),
                   np.zeros((0, 0), np.uint8))

    @classmethod
    def from_ids(cls, bounds: np.ndarray, ids: np.ndarray) -> Selection:
        """The selection of the (ascending, unique) role rows ``ids``."""
        chunk = np.searchsorted(bounds, ids, side="right") - 1
        parts = [(int(c), *_pack(int(bounds[c + 1] - bounds[c]), ids[chunk == c] - bounds[c])) for c in np.unique(chunk)]
        return _assemble(bounds, parts)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.bounds, self.chunks, self.counts, self.mask_of, self.masks))

    def local(self, k: int) -> np.ndarray:
        """Selected rows of the ``k``-th selected chunk, as offsets within that chunk (ascending)."""
        c = int(self.chunks[k])
        size = int(self.bounds[c + 1] - self.bounds[c])
        m = int(self.mask_of[k])
        if m < 0:
            return np.arange(size, dtype=np.int64)
        return np.flatnonzero(np.unpackbits(self.masks[m], count=size)).astype(np.int64)

    def ids(self, k: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Role rows of the ``k``-th selected chunk's selected rows ``[lo, hi)``."""
        c = int(self.chunks[k])
        if int(self.mask_of[k]) < 0:
            stop = int(self.counts[k]) if hi is None else hi
            return np.arange(self.bounds[c] + lo, self.bounds[c] + stop, dtype=np.int64)
        return self.bounds[c] + self.local(k)[lo:hi]

    def base(self, pos: np.ndarray) -> np.ndarray:
        """Role rows at view positions ``pos`` (any order, in range), decoding only the chunks they touch."""
        ends = np.cumsum(self.counts)
        k = np.searchsorted(ends, pos, side="right")
        out = np.empty(pos.shape, dtype=np.int64)
        for kk in np.unique(k):
            sel = np.flatnonzero(k == kk)
            within = pos[sel] - (ends[kk] - self.counts[kk])
            out[sel] = self.ids(int(kk))[within] if self.mask_of[kk] >= 0 else self.bounds[self.chunks[kk]] + within
        return out

    def row_ids(self) -> np.ndarray:
        """Every selected role row (O(selected rows) memory: for small selections and tests)."""
        if not self.chunks.size:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self.ids(k) for k in range(self.chunks.size)])


def _pack(size: int, local: np.ndarray) -> tuple[int, np.ndarray | None]:
    """``(count, packed bits)`` of a chunk's selected local offsets; no bits when every row is selected."""
    if local.size == size:
        return size, None
    bits = np.zeros(size, dtype=bool)
    bits[local] = True
    return int(local.size), np.packbits(bits)


def _assemble(bounds: np.ndarray, parts: list[tuple[int, int, np.ndarray | None]]) -> Selection:
    """A selection from ``(chunk, count, packed bits or None)`` (chunks ascending, no empty ones): each chunk is
    packed as it is found, so building a selection never holds more than one chunk's offsets."""
    chunks, counts, mask_of, masks = [], [], [], []
    for c, count, packed_bits in parts:
        chunks.append(c)
        counts.append(count)
        if packed_bits is None:
            mask_of.append(-1)
        else:
            mask_of.append(len(masks))
            masks.append(packed_bits)
    width = max((m.size for m in masks), default=0)
    packed = np.zeros((len(masks), width), dtype=np.uint8)
    for i, m in enumerate(masks):
        packed[i, : m.size] = m
    return Selection(bounds, np.asarray(chunks, np.int64), np.asarray(counts, np.int64),
                     np.asarray(mask_of, np.int64), packed)


class RowIndex:
    """The row table of one role, read chunk by chunk through its array reader."""

    CACHE = 16
    """Decoded row-table chunks kept (an LRU)."""

    def __init__(self, reader: Any, columns: list[str], role: str, path: str, stats_reader: Any | None = None) -> None:
        self.reader = reader
        self.columns = list(columns)
        self.role, self.path = role, path
        self.what = f"the {role!r} rows of {path}"
        self.bounds = chunk_bounds(reader)
        self.chunks_read = 0
        """Row-table chunks decoded so far (a structural measure for tests and benchmarks)."""
        self.full_reads = 0
        """Whole row tables loaded so far (``store.rows(role)``)."""
        self._stats_reader = stats_reader
        self._stats: np.ndarray | None = None
        self._tail: tuple[int, RowTable] | None = None
        """The last chunk read to compute its statistics."""
        self._distinct: dict[str, np.ndarray] = {}
        self._lru: OrderedDict[int, RowTable] = OrderedDict()

    @property
    def n_rows(self) -> int:
        return int(self.bounds[-1])

    @property
    def n_chunks(self) -> int:
        return int(self.bounds.size - 1)

    # ------------------------------------------------------------------------------------------ reading
    def chunk(self, c: int) -> RowTable:
        """The rows of chunk ``c`` as a row table."""
        hit = self._lru.get(c)
        if hit is not None:
            self._lru.move_to_end(c)
            return hit
        if self._tail is not None and self._tail[0] == c:
            return self._tail[1]
        lo, hi = int(self.bounds[c]), int(self.bounds[c + 1])
        mat = self.reader.read_range(lo, hi)
        self.chunks_read += 1
        table = RowTable({name: np.ascontiguousarray(mat[:, j]) for j, name in enumerate(self.columns)},
                         f"{self.what} (rows {lo}..{hi - 1})")
        self._lru[c] = table
        while len(self._lru) > self.CACHE:
            self._lru.popitem(last=False)
        return table

    def table(self) -> RowTable:
        """The whole row table (what ``store.rows(role)`` returns): O(rows) memory."""
        mat = self.reader.read_range(0, self.n_rows)
        self.full_reads += 1
        return RowTable({c: np.ascontiguousarray(mat[:, j]) for j, c in enumerate(self.columns)}, self.what)

    def rows_at(self, ids: np.ndarray) -> RowTable:
        """The row-table entries of role rows ``ids`` (any order)."""
        mat = self.reader.read_rows(np.asarray(ids, dtype=np.int64))
        return RowTable({c: np.ascontiguousarray(mat[:, j]) for j, c in enumerate(self.columns)}, self.what)

    def rows_of(self, sel: Selection) -> RowTable:
        """The row-table entries of a selection's rows, in order, one chunk at a time."""
        cols: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}
        for k in range(sel.chunks.size):
            table = self.chunk(int(sel.chunks[k]))
            local = sel.local(k)
            for c in self.columns:
                cols[c].append(table[c][local])
        return RowTable({c: np.concatenate(v) if v else np.zeros(0, _I8) for c, v in cols.items()}, self.what)

    # -------------------------------------------------------------------------------------------- stats
    def stats(self) -> np.ndarray:
        """Per-chunk ``[min of each column..., max of each column...]`` (n_chunks, 2C): stored with the commit and
        checked against its crc32c, or computed here chunk by chunk (stores written before per-chunk statistics,
        and the last chunk while it is still filling)."""
        if self._stats is None:
            c = len(self.columns)
            out, first = np.empty((self.n_chunks, 2 * c), dtype=_I8), 0
            if self._stats_reader is not None:  # rows past ``trusted`` (a chunk still filling) are computed here
                first = min(self.n_chunks, self._stats_reader.trusted)
                out[:first] = self._stats_reader.read_range(0, self.n_chunks)[:first]
            for k in range(first, self.n_chunks):
                table = self.chunk(k)
                self._tail = (k, table)  # kept: a filter reading it next does not read it again
                for j, name in enumerate(self.columns):
                    out[k, j], out[k, c + j] = table[name].min(), table[name].max()
            self._stats = out
        return self._stats

    def column(self, name: str) -> int:
        if name not in self.columns:
            raise UnknownKeyError(f"no column {name!r} in {self.what}; columns are {self.columns}")
        return self.columns.index(name)

    def could_hold(self, name: str, values: np.ndarray) -> np.ndarray:
        """Per chunk: may it hold a row whose ``name`` is one of ``values`` (sorted)?"""
        j = self.column(name)
        st = self.stats()
        lo = np.searchsorted(values, st[:, j], side="left")
        hi = np.searchsorted(values, st[:, len(self.columns) + j], side="right")
        return hi > lo

    def distinct(self, name: str) -> np.ndarray:
        """The sorted distinct values of a column (one pass over the chunks, O(distinct values) memory)."""
        if name not in self._distinct:
            j = self.column(name)
            st = self.stats()
            seen = np.zeros(0, dtype=_I8)
            for k in range(self.n_chunks):
                if st[k, j] == st[k, len(self.columns) + j]:
                    seen = np.union1d(seen, st[k, j : j + 1])
                else:
                    seen = np.union1d(seen, np.unique(self.chunk(k)[name]))
            self._distinct[name] = seen
        return self._distinct[name]

    # ------------------------------------------------------------------------------------------- select
    def select(self, values: Mapping[str, np.ndarray], where: RowFilter | np.ndarray | None = None) -> Selection:
        """The rows whose every ``values`` column is in its values and for which ``where`` holds.

        Chunks whose statistics rule a value set out are never read; raises :class:`UnknownKeyError` for a value
        that no row of its column holds (checked, like the rest, chunk by chunk)."""
        vals = {name: np.unique(np.asarray(v, dtype=_I8)) for name, v in values.items()}
        if isinstance(where, np.ndarray) or (where is not None and not callable(where)):
            mask = np.asarray(where)
            if mask.dtype != bool or mask.shape != (self.n_rows,):
                raise StoreIndexError(f"where must give a boolean mask of shape ({self.n_rows},), "
                                      f"got {mask.dtype} {mask.shape}")
            where = _MaskFilter(mask, self.bounds)
        candidates = np.ones(self.n_chunks, dtype=bool)
        for name, v in vals.items():
            candidates &= self.could_hold(name, v)
        if not vals and where is None:
            return Selection.all(self.bounds)
        found = {name: np.zeros(v.size, dtype=bool) for name, v in vals.items()}
        parts: list[tuple[int, int, np.ndarray | None]] = []
        checked = False  # whether the where predicate was seen to work row by row
        for c in np.flatnonzero(candidates).tolist():
            table = self.chunk(c)
            keep = np.ones(table[self.columns[0]].size, dtype=bool)
            for name, v in vals.items():
                hit = np.isin(table[name], v)
                found[name] |= np.isin(v, table[name][hit]) if hit.any() else False
                keep &= hit
            if where is not None and keep.any():
                extra = where(table, c) if isinstance(where, _MaskFilter) else np.asarray(where(table))
                if extra.dtype != bool or extra.shape != keep.shape:
                    raise StoreIndexError(f"where must give a boolean mask of shape {keep.shape} (one entry per row "
                                          f"of the chunk it is given), got {extra.dtype} {extra.shape}")
                if not checked and not isinstance(where, _MaskFilter):
                    checked = _check_row_wise(where, table, extra)
                keep &= extra
            local = np.flatnonzero(keep)
            if local.size:
                parts.append((c, *_pack(keep.size, local)))
        for name, v in vals.items():
            self._check_found(name, v, found[name], candidates)
        return _assemble(self.bounds, parts)

    def _check_found(self, name: str, values: np.ndarray, found: np.ndarray, scanned: np.ndarray) -> None:
        """Values of one column filter that matched no selected row: look for them in the chunks the other
        filters ruled out; one that no row holds at all is an :class:`UnknownKeyError`."""
        for v in values[~found].tolist():
            could = self.could_hold(name, np.array([v], dtype=_I8)) & ~scanned
            if any(np.any(self.chunk(c)[name] == v) for c in np.flatnonzero(could).tolist()):
                continue
            if name == "step":
                shown = [int(s) for s in self.distinct("step") if s != -1]
            else:
                have = self.distinct(name)
                shown = have[:10].tolist() + (["..."] if have.size > 10 else [])
            raise UnknownKeyError(f"no {name} {v} for role {self.role!r} in store {self.path}; {name}s are {shown}")


def _check_row_wise(where: RowFilter, table: RowTable, whole: np.ndarray) -> bool:
    """Refuse a ``where`` predicate that is not row by row (an aggregate such as ``r["sample"].max()``), which a
    chunk-by-chunk evaluation would silently answer differently than one over the whole table: the predicate must
    give the same mask on the two halves of a chunk as on the whole chunk. True once a chunk of 2+ rows was seen."""
    n = whole.size
    if n < 2:
        return False
    h = n // 2
    halves = [np.asarray(where(RowTable({k: v[sl] for k, v in table.items()}, table.what)))
              for sl in (slice(0, h), slice(h, n))]
    same = halves[0].shape == (h,) and halves[1].shape == (n - h,) and np.array_equal(np.concatenate(halves), whole)
    if not same:
        raise ConfigError("where= must decide each row from that row's own values (e.g. r['position'] < 4): it is "
                          "evaluated one row-table chunk at a time, and this predicate gave a different answer on "
                          "half a chunk than on the whole chunk (an aggregate such as r['sample'].max()?); compute "
                          "such values first (store.rows(role)) and filter with a boolean mask or match=")
    return True


class _MaskFilter:
    """A boolean mask over all of a role's rows, handed out chunk by chunk."""

    def __init__(self, mask: np.ndarray, bounds: np.ndarray) -> None:
        self.mask, self.bounds = mask, bounds

    def __call__(self, table: RowTable, c: int) -> np.ndarray:
        return self.mask[int(self.bounds[c]) : int(self.bounds[c + 1])]
