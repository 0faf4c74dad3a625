"""NaN/Inf accounting: counting the values of some rows, and one array's count at any committed row count.

The encode threads count each block as they encode it; a commit records the count of exactly the rows it commits.
Those are not always the rows encoded so far: a commit of a mark behind the last append (``autocommit=False``)
flushes a partial chunk that holds later rows too, a rollback forgets rows whose blocks were counted, and a resumed
writer encodes the committed partial block again. :class:`NonfiniteCounts` keeps a count per block for the blocks
no commit has covered yet, so each of those gives the count of the committed rows, never of rows around them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

__all__ = ["NonfiniteCounts", "RowsOf", "count_nonfinite"]

RowsOf = Callable[[int, int], np.ndarray]
"""Rows ``[start, stop)`` of the array, read back (from the store: every block below the writer's rows is there)."""

_NONFINITE_FROM = {"bfloat16": (np.uint16, np.int16, 0xFF80, 0x7F80), "float16": (np.uint16, np.int16, 0xFC00, 0x7C00),
                   "float32": (np.uint32, np.int32, 0xFF800000, 0x7F800000)}
"""Storage dtype -> (unsigned view, signed view, first negative and first positive NaN/Inf bit pattern)."""


def count_nonfinite(rows: np.ndarray, logical: str) -> int:
    """NaN and +-Inf values in storage-dtype rows (bf16 as uint16 bits: exponent all ones).

    The common, all-finite case costs two read-only max reductions and writes nothing: a value is NaN/Inf iff its
    exponent bits are all ones, i.e. its bit pattern, read as unsigned, is at least the first negative NaN/Inf
    pattern (0xFF80 for bf16: the top of the unsigned order), or, read as signed, at least the first positive one
    (0x7F80: the top of the signed order). Only rows where one fires are counted exactly."""
    views = _NONFINITE_FROM.get(logical)
    if views is None or rows.dtype.itemsize != np.dtype(views[0]).itemsize:
        return int(rows.size - np.count_nonzero(np.isfinite(rows)))
    unsigned, signed, neg, pos = views
    flat = rows.reshape(-1)
    if flat.size == 0 or (int(flat.view(unsigned).max()) < neg and int(flat.view(signed).max()) < pos):
        return 0
    exponent = np.bitwise_and(flat.view(unsigned), pos)
    return int(np.count_nonzero(exponent == pos))


class NonfiniteCounts:
    """The NaN/Inf values of one array's rows, as its blocks are encoded.

    Blocks wholly below the last commit are summed in :attr:`settled`; every later block keeps the number of rows
    counted from its start (fewer than a block for the trailing one) and their count, as last encoded. Encode
    threads call :meth:`record`; the writer thread calls :meth:`commit`, :meth:`forget` and :meth:`resume` while no
    encode is in flight.
    """

    def __init__(self, logical: str, block_rows: int) -> None:
        self.logical = logical
        """The activations' dtype name (``bfloat16``...), as :func:`count_nonfinite` takes it."""
        self.block_rows = block_rows
        self.settled = 0
        """NaN/Inf values in blocks ``[0, settled_blocks)``."""
        self.settled_blocks = 0
        self._blocks: dict[int, tuple[int, int]] = {}
        """Block index -> (rows counted from the block's start, their NaN/Inf count), for blocks not settled."""
        self._lock = threading.Lock()

    def record(self, block: int, rows: np.ndarray | None, real_rows: int) -> None:
        """Count block ``block``: ``rows``, of which the first ``real_rows`` are the array's (the rest is the zero
        padding of a partial block); None when the appending caller checked every one of them (none)."""
        n = 0 if rows is None else count_nonfinite(rows, self.logical)
        with self._lock:
            self._blocks[block] = (real_rows, n)

    def total(self) -> int:
        """Every value counted so far (committed or not)."""
        with self._lock:
            return self.settled + sum(c for _, c in self._blocks.values())

    def at(self, n_rows: int, rows_of: RowsOf) -> int:
        """NaN/Inf values among rows ``[0, n_rows)``; every block below ``n_rows`` must have been recorded. The
        block holding row ``n_rows`` is counted again from ``rows_of`` when its record covers other rows."""
        self._settle_at_most(n_rows // self.block_rows, rows_of)
        full, rest = divmod(n_rows, self.block_rows)
        with self._lock:
            n = self.settled + sum(c for b, (_, c) in self._blocks.items() if b < full)
            got = self._blocks.get(full)
        if rest:
            start = full * self.block_rows
            if got is not None and got[0] == rest:
                n += got[1]
            else:
                n += count_nonfinite(rows_of(start, n_rows), self.logical)
        return n

    def commit(self, n_rows: int, rows_of: RowsOf) -> int:
        """The count of rows ``[0, n_rows)`` (a commit of that many rows); the blocks wholly below it are settled."""
        n = self.at(n_rows, rows_of)
        full = n_rows // self.block_rows
        with self._lock:
            for b in [b for b in self._blocks if b < full]:
                self.settled += self._blocks.pop(b)[1]
            self.settled_blocks = max(self.settled_blocks, full)
        return n

    def forget(self, n_rows: int, rows_of: RowsOf) -> None:
        """A rollback to ``n_rows`` rows: the blocks from the one holding row ``n_rows`` on are dropped (encoded
        again, and counted again, if rows are appended there)."""
        full = n_rows // self.block_rows
        self._settle_at_most(full, rows_of)
        with self._lock:
            for b in [b for b in self._blocks if b >= full]:
                del self._blocks[b]

    def resume(self, committed: int, n_rows: int, partial: np.ndarray) -> None:
        """A resumed array: ``n_rows`` committed rows holding ``committed`` NaN/Inf values, and ``partial``, the
        rows of its last, partly filled block (encoded again, so counted again, before the next commit)."""
        with self._lock:
            self._blocks.clear()
            self.settled = committed - count_nonfinite(partial, self.logical)
            self.settled_blocks = n_rows // self.block_rows

    def _settle_at_most(self, blocks: int, rows_of: RowsOf) -> None:
        """Make :attr:`settled` cover at most ``blocks`` blocks: a rollback (or a commit) behind an earlier commit
        subtracts the rows between them, read back."""
        br = self.block_rows
        while self.settled_blocks > blocks:
            start = max(blocks, self.settled_blocks - 64) * br  # at most 64 blocks read back at a time
            n = count_nonfinite(rows_of(start, self.settled_blocks * br), self.logical)
            with self._lock:
                self.settled -= n
                self.settled_blocks = start // br
