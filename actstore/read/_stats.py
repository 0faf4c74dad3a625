"""Per-chunk row statistics, the reader's side: where they live, how a stats row is computed, and their check
against the crc32c of the commit record (:class:`CheckedStats`). The writer's side is :mod:`actstore.write._rowstats`
(see there for the format and the safety argument; ``docs/format.md``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .._errors import CorruptStoreError
from ..format._codec import crc32c_of

__all__ = ["CheckedStats", "chunk_stats", "stats_crcs", "stats_key"]

_I8 = np.dtype("<i8")


def stats_key(role: str) -> str:
    """Where the per-chunk statistics of a role's row table live."""
    return f"rowstats/{role}"


def chunk_stats(rows_NC: np.ndarray) -> np.ndarray:
    """One stats row of a chunk's rows: ``[min of each column..., max of each column...]``."""
    return np.concatenate([rows_NC.min(axis=0), rows_NC.max(axis=0)]).astype(_I8)


def stats_crcs(stats: np.ndarray, chunk_rows: int) -> list[int]:
    """The crc32c of the rows of each stats chunk (``chunk_rows`` stats rows each, the last one partly filled)."""
    return [crc32c_of(np.asarray(stats[s : s + chunk_rows], dtype=_I8)) for s in range(0, len(stats), chunk_rows)]


class CheckedStats:
    """A role's committed statistics, checked against the crc32c the commit record holds for them (the
    ``read_range`` of an array reader, for :class:`~actstore.read._rowindex.RowIndex`); records written before the
    checksums (``crcs`` None) are read as stored.

    The crc32c cover the stats rows of the row-table chunks that are full (``n_full``): those never change once
    committed. The last, partly filled chunk's row is rewritten at every commit while a writer appends, so it is
    not covered: :attr:`trusted` says how many rows the caller may use as stored (the reader computes the last
    one from the row table itself)."""

    def __init__(self, role: str, chunk_rows: int, crcs: list[int] | None, n_full: int,
                 read: Callable[[int], np.ndarray], path: str) -> None:
        self._role = role
        self._chunk_rows = chunk_rows
        self._crcs = crcs
        self.trusted = n_full if crcs is not None else 1 << 62
        """Rows covered by the record's crc32c (all of them in a store from before the checksums)."""
        self._read = read
        """``read(n)``: the first ``n`` stats rows as stored."""
        self._path = path

    def read_range(self, start: int, stop: int) -> np.ndarray:
        stats = self._read(stop)
        if self._crcs is not None and stats_crcs(stats[: self.trusted], self._chunk_rows) != self._crcs:
            raise CorruptStoreError(
                f"{stats_key(self._role)} in {self._path} does not match the crc32c the commit record holds for it: "
                "the row statistics were swapped, replaced or damaged (a filter would skip rows that match); "
                "`actstore verify` lists the chunks; `actstore export` copies the store with statistics rebuilt")
        return stats[start:]
