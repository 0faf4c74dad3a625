"""The shuffling plan: which rows a (seed, epoch, rank, worker) reads, grouped in buffers, in which order.

Pure numpy, no I/O, and O(chunks) memory: a plan never holds one entry per row (a buffer's row ids are made
when the buffer is read). The plan of one epoch is built in four steps:

1. *Chunk order.* The selected rows (a :class:`~actstore.read._rowindex.Selection`) are grouped by the chunk that
   stores them; the chunks are put in a random order drawn from ``numpy.random.default_rng([seed, epoch])``
   (stored order when not shuffling). Concatenating each chunk's selected rows in that order gives the epoch's
   *stream* of ``N`` rows (kept as one cumulative count per chunk).
2. *Ranks.* The stream is cut into ``world_size`` contiguous, equal pieces, one per rank, so that each rank reads
   whole chunks (at most two are shared with a neighbour). When ``world_size`` does not divide ``N``, the ranks are
   equalised as ``torch.utils.data.DistributedSampler`` does: ``drop_last=False`` pads the stream with its first
   rows (fewer than ``world_size`` rows are then seen twice in that epoch), ``drop_last=True`` leaves out its last
   rows (fewer than ``world_size``, different ones each epoch). Every rank then has the same number of batches.
3. *Buffers.* A rank's batches are spread evenly over the fewest buffers of at most about ``shuffle_chunks``
   chunks (a whole number of batches each), so the last buffer is as large as the others instead of holding
   the leftover chunks. The loader decodes a whole buffer, permutes it with a generator seeded by
   ``[seed, epoch, rank, buffer]`` and slices it into batches. Only the rank's last batch can be short (left
   out with ``drop_last=True``, together with the rows after the last whole batch).
4. *Workers.* DataLoader worker ``w`` of ``W`` takes buffers ``w, w + W, ...`` of its rank; the DataLoader's
   round-robin then interleaves their batches (see :func:`resume_split`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..read._rowindex import Selection
from ._loader_config import LoaderConfig

__all__ = ["EpochPlan", "chunk_order", "plan_epoch", "resume_split"]


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def chunk_order(n_chunks: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order in which an epoch's stream visits the selected chunks."""
    if not shuffle:
        return np.arange(n_chunks, dtype=np.int64)
    return _rng(seed, epoch).permutation(n_chunks).astype(np.int64)


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """One rank's rows for one epoch, cut into buffers (O(chunks + buffers) memory)."""

    selection: Selection
    order_of_chunks: np.ndarray
    """Positions into the selection's chunks, in stream order."""
    ends: np.ndarray
    """Cumulative selected rows of the chunks in stream order (the stream is ``ends[-1]`` rows long)."""
    start: int
    """This rank's first position in the (padded) stream."""
    starts: np.ndarray
    """Rank-local first row of every buffer, then the end of the last one (``n_buffers + 1`` entries)."""
    buffer_rows: int
    """Rows of the largest buffer (a multiple of ``batch_size``)."""
    batch_size: int
    drop_last: bool
    shuffle: bool
    seed: int
    epoch: int
    rank: int

    @property
    def n_buffers(self) -> int:
        return int(self.starts.size - 1)

    @property
    def n_rows(self) -> int:
        """Rows this rank reads in the epoch."""
        return int(self.starts[-1])

    @property
    def nbytes(self) -> int:
        """Memory held by the plan (its selection included)."""
        return self.selection.nbytes + self.order_of_chunks.nbytes + self.ends.nbytes + self.starts.nbytes

    def _stream(self, a: int, b: int) -> np.ndarray:
        """Role row ids at stream positions ``[a, b)`` (positions past the end wrap to the start: padding)."""
        n = int(self.ends[-1]) if self.ends.size else 0
        pieces = []
        while a < b:
            lo = a % n
            hi = min(n, lo + (b - a))
            k = int(np.searchsorted(self.ends, lo, side="right"))
            pos = lo
            while pos < hi:
                first = int(self.ends[k] - self.selection.counts[self.order_of_chunks[k]])
                stop = min(hi, int(self.ends[k]))
                pieces.append(self.selection.ids(int(self.order_of_chunks[k]), pos - first, stop - first))
                pos = stop
                k += 1
            a += hi - lo
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def buffer(self, i: int) -> np.ndarray:
        """Row ids of buffer ``i`` (stream order: chunk-contiguous)."""
        return self._stream(self.start + int(self.starts[i]), self.start + int(self.starts[i + 1]))

    @property
    def rows(self) -> np.ndarray:
        """All row ids of this rank in stream order (one entry per row: for tests and small stores)."""
        return self._stream(self.start, self.start + self.n_rows)

    def buffer_batches(self, i: int) -> int:
        """Batches that buffer ``i`` yields."""
        return -(-int(self.starts[i + 1] - self.starts[i]) // self.batch_size)

    def batch_counts(self) -> np.ndarray:
        return -(-np.diff(self.starts) // self.batch_size)

    def __len__(self) -> int:
        return int(self.batch_counts().sum())

    def order(self, i: int) -> np.ndarray:
        """Positions within buffer ``i`` in the order they are yielded."""
        n = int(self.starts[i + 1] - self.starts[i])
        return _rng(self.seed, self.epoch, self.rank, i).permutation(n) if self.shuffle else np.arange(n)


def _buffer_starts(n: int, batch_size: int, cap_batches: int, drop_last: bool) -> np.ndarray:
    """Rank-local buffer bounds: the rank's batches spread evenly over the fewest buffers of at most
    ``cap_batches`` batches; with ``drop_last`` the rows after the last whole batch are left out."""
    batches = n // batch_size if drop_last else -(-n // batch_size)
    if batches == 0:
        return np.zeros(1, dtype=np.int64)
    n_buf = -(-batches // cap_batches)
    per = np.full(n_buf, batches // n_buf, dtype=np.int64)
    per[: batches % n_buf] += 1
    starts = np.r_[0, np.cumsum(per * batch_size)].astype(np.int64)
    starts[-1] = min(int(starts[-1]), n)
    return starts


def plan_epoch(selection: Selection, config: LoaderConfig, *, chunk_rows: int, epoch: int, rank: int,
               world_size: int) -> EpochPlan:
    """The plan of one rank for one epoch (see the module docstring): ``config`` whole (its batch size, shuffle
    buffer, seed, ``shuffle`` and ``drop_last``), the store's ``chunk_rows``, and where in training this is."""
    batch_size, shuffle_chunks, seed = config.batch_size, config.shuffle_chunks, config.seed
    shuffle, drop_last = config.shuffle, config.drop_last
    order = chunk_order(selection.chunks.size, seed, epoch, shuffle)
    ends = np.cumsum(selection.counts[order]).astype(np.int64)
    n = int(ends[-1]) if ends.size else 0
    if world_size > 1:
        per = n // world_size if drop_last else -(-n // world_size)
        if not n:
            per = 0
    else:
        per = n
    cap = max(1, -(-(shuffle_chunks * chunk_rows) // batch_size))
    starts = _buffer_starts(per, batch_size, cap, drop_last)
    widest = int(np.max(np.diff(starts), initial=0))
    buffer_rows = max(1, -(-widest // batch_size)) * batch_size
    return EpochPlan(selection, order, ends, rank * per, starts, buffer_rows, batch_size, drop_last, shuffle, seed,
                     epoch, rank)


def resume_split(counts: np.ndarray, n_workers: int, consumed: int) -> tuple[np.ndarray, list[int]]:
    """Where each DataLoader worker resumes after ``consumed`` batches of the round-robin interleave.

    ``counts[i]`` is the batch count of buffer ``i``; worker ``w`` owns buffers ``w, w + W, ...``. A DataLoader
    takes one batch from each live worker in turn. Returns ``(skip, roles)``: ``skip[w]`` batches of worker ``w``
    were consumed, and ``roles[p]`` is the worker whose remaining batches physical worker ``p`` must yield after a
    restart so that the restarted round-robin (which starts at worker 0) continues the interrupted one exactly.
    Physical workers ``p >= len(roles)`` yield nothing.
    """
    per_worker = np.array([int(counts[w::n_workers].sum()) for w in range(n_workers)], dtype=np.int64)
    # the interleave: batch k of worker w comes at key (k, w)
    ks = np.concatenate([np.arange(c) for c in per_worker]) if per_worker.sum() else np.zeros(0, np.int64)
    ws = np.repeat(np.arange(n_workers), per_worker)
    seq = ws[np.lexsort((ws, ks))]
    if consumed > seq.size:
        raise ValueError(f"{consumed} batches consumed but the epoch has only {seq.size}")
    skip = np.bincount(seq[:consumed], minlength=n_workers).astype(np.int64)
    if consumed == seq.size:
        return skip, []
    live = [w for w in range(n_workers) if skip[w] < per_worker[w]]
    first = live.index(int(seq[consumed]))
    return skip, live[first:] + live[:first]
