"""The shuffling plan: which rows a (seed, epoch, rank, worker) reads, grouped in buffers, in which order.

Pure numpy, no I/O. The plan of one epoch is built in four steps:

1. *Chunk order.* The selected rows are grouped by the chunk that stores them; the chunks are put in a random
   order drawn from ``numpy.random.default_rng([seed, epoch])`` (stored order when not shuffling). Concatenating
   each chunk's selected rows in that order gives the epoch's *stream* of ``N`` rows.
2. *Ranks.* The stream is cut into ``world_size`` contiguous, equal pieces, one per rank, so that each rank reads
   whole chunks (at most two are shared with a neighbour). When ``world_size`` does not divide ``N``, the ranks are
   equalised as ``torch.utils.data.DistributedSampler`` does: ``drop_last=False`` pads the stream with its first
   rows (fewer than ``world_size`` rows are then seen twice in that epoch), ``drop_last=True`` leaves out its last
   rows (fewer than ``world_size``, different ones each epoch). Every rank then has the same number of batches.
3. *Buffers.* A rank's rows are cut into buffers of ``buffer_rows`` rows (a multiple of ``batch_size``; about
   ``shuffle_chunks`` chunks). The loader decodes a whole buffer, permutes it with a generator seeded by
   ``[seed, epoch, rank, buffer]`` and slices it into batches. Only the rank's last batch can be short (dropped
   with ``drop_last=True``).
4. *Workers.* DataLoader worker ``w`` of ``W`` takes buffers ``w, w + W, ...`` of its rank; the DataLoader's
   round-robin then interleaves their batches (see :func:`resume_split`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["EpochPlan", "chunk_stream", "plan_epoch", "resume_split"]


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def chunk_stream(
    rows: np.ndarray, chunk_rows: int, seed: int, epoch: int, shuffle: bool,
    chunk_of: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """The epoch's stream: ``rows`` (sorted ascending) regrouped by chunk, chunks in a random order.

    ``chunk_of`` maps rows to chunk ids where chunks are not a regular grid (a store of several parts)."""
    if not shuffle or rows.size == 0:
        return rows
    chunk = rows // chunk_rows if chunk_of is None else chunk_of(rows)
    starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]])
    bounds = np.r_[starts, rows.size]
    order = _rng(seed, epoch).permutation(starts.size)
    lengths = (bounds[1:] - bounds[:-1])[order]
    # positions of the reordered segments, without a Python loop over chunks
    seg_start = np.repeat(bounds[:-1][order], lengths)
    within = np.arange(rows.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows[seg_start + within]


@dataclass(frozen=True)
class EpochPlan:
    """One rank's rows for one epoch, cut into buffers."""

    rows: np.ndarray
    """Role row ids this rank reads, in stream order (chunk-contiguous)."""
    buffer_rows: int
    """Rows per buffer (a multiple of ``batch_size``); the last buffer may be shorter."""
    batch_size: int
    drop_last: bool
    shuffle: bool
    seed: int
    epoch: int
    rank: int

    @property
    def n_buffers(self) -> int:
        return -(-self.rows.size // self.buffer_rows)

    def buffer(self, i: int) -> np.ndarray:
        """Row ids of buffer ``i`` (stream order)."""
        return self.rows[i * self.buffer_rows : (i + 1) * self.buffer_rows]

    def buffer_batches(self, i: int) -> int:
        """Batches that buffer ``i`` yields."""
        n = min(self.buffer_rows, self.rows.size - i * self.buffer_rows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_counts(self) -> np.ndarray:
        return np.array([self.buffer_batches(i) for i in range(self.n_buffers)], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.batch_counts().sum())

    def order(self, i: int) -> np.ndarray:
        """Positions within buffer ``i`` in the order they are yielded (truncated to whole batches if dropping)."""
        n = min(self.buffer_rows, self.rows.size - i * self.buffer_rows)
        perm = _rng(self.seed, self.epoch, self.rank, i).permutation(n) if self.shuffle else np.arange(n)
        return perm[: self.buffer_batches(i) * self.batch_size] if self.drop_last else perm


def plan_epoch(
    rows: np.ndarray,
    *,
    chunk_rows: int,
    batch_size: int,
    shuffle_chunks: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    drop_last: bool,
    chunk_of: Callable[[np.ndarray], np.ndarray] | None = None,
) -> EpochPlan:
    """The plan of one rank for one epoch (see the module docstring)."""
    stream = chunk_stream(rows, chunk_rows, seed, epoch, shuffle, chunk_of)
    n = stream.size
    if world_size > 1:
        if drop_last:
            per = n // world_size
        else:
            per = -(-n // world_size)
            if per * world_size > n and n:
                reps = -(-(per * world_size) // n)
                stream = np.tile(stream, reps)[: per * world_size]
        mine = stream[rank * per : (rank + 1) * per]
    else:
        mine = stream
    buffer_rows = max(1, -(-(shuffle_chunks * chunk_rows) // batch_size)) * batch_size
    return EpochPlan(mine, buffer_rows, batch_size, drop_last, shuffle, seed, epoch, rank)


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
