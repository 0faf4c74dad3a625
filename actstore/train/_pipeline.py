"""The background pipeline of one loader iteration: decode shuffle buffers, gather batches, hand them over.

One iteration runs one producer thread beside the consumer, in named steps:

1. :class:`_DoubleBuffer` decodes a shuffle buffer's chunks concurrently (the codecs release the GIL) straight
   into one of two reused sets of buffers; while the producer gathers the batches of one set, the next shuffle
   buffer is decoded into the other.
2. :class:`_Assembler` gathers a batch's rows from the decoded set into output tensors (one
   ``torch.index_select`` per layer), moves them to ``cfg.device`` on a side CUDA stream when asked, and packs
   them as the batch the caller sees (a tensor, a dict of layers, ``(acts, rows)``). Where output tensors are
   reused, :class:`_SlotRing` says which slot is next and waits for the device copy last made from it.
3. :class:`_Producer` is the thread: it walks the :class:`Work` buffer by buffer and puts each batch on a bounded
   queue; an error is put on the queue too (re-raised in the consumer, never swallowed).
4. :func:`batches` is the consumer: it starts the producer, takes batches off the queue (making the current
   CUDA stream wait for their copy) and stops and joins the thread when closed, garbage collected or at
   interpreter exit.
"""

from __future__ import annotations

import atexit
import queue
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch

from ..format._format import DTYPES
from ..read._blocks import decode_pool
from ._loader_config import LoaderConfig
from ._shuffle import EpochPlan

__all__ = ["Batch", "ChunkReader", "Inputs", "Work", "batches", "decode_sets"]

Batch = Any
"""A tensor (one layer), a dict layer -> tensor (several layers), or ``(acts, rows)`` with ``with_rows``."""


class ChunkReader(Protocol):
    """What the pipeline needs of an array reader: decode some rows of one chunk into a buffer."""

    width: int
    dtype: np.dtype[Any]

    def chunk_index(self, rows: np.ndarray) -> np.ndarray: ...

    def read_chunk_rows(self, chunk: int, ids: np.ndarray, out: np.ndarray) -> None: ...


@dataclass(frozen=True)
class Inputs:
    """What one iteration reads: a reader per layer, and the row table's reader when batches carry their rows."""

    layers: tuple[int | str, ...]
    """Layer keys, in the order of ``readers`` (the keys of a multi-layer batch)."""
    readers: tuple[ChunkReader, ...]
    """One reader per layer."""
    dtype_names: tuple[str, ...]
    """The stored dtype of each layer (a key of ``DTYPES``)."""
    multi: bool
    """Yield a dict ``{layer: tensor}`` (a list of layers was asked for) instead of one tensor."""
    row_reader: ChunkReader | None = None
    """The row table's reader: each batch then comes with its rows (``with_rows``)."""
    columns: tuple[str, ...] = ()
    """The row table's columns (with ``row_reader``)."""


@dataclass(frozen=True)
class Work:
    """Which batches of an epoch plan one iteration yields."""

    plan: EpochPlan
    """This rank's plan of the epoch."""
    buffer_ids: tuple[int, ...]
    """The plan's shuffle buffers to read, in order."""
    skip: int = 0
    """Batches of those buffers already yielded (a resumed epoch): left out at the start."""
    reuse: bool = False
    """Host batches come from the ring of reused output slots (``reuse_buffers``) instead of fresh tensors."""

    def remaining(self) -> Work:
        """The same work without the buffers ``skip`` covers whole (``skip`` then falls inside the first one)."""
        ids, skip = list(self.buffer_ids), self.skip
        while ids and skip >= self.plan.buffer_batches(ids[0]):
            skip -= self.plan.buffer_batches(ids.pop(0))
        return replace(self, buffer_ids=tuple(ids), skip=skip)


# ------------------------------------------------------------------------------------------- decoding
def decode_sets(readers: Sequence[ChunkReader], rows: int) -> list[list[np.ndarray]]:
    """Two sets of decode buffers of ``rows`` rows, one array per reader (to reuse across iterations)."""
    return [[np.empty((rows, r.width), dtype=r.dtype) for r in readers] for _ in range(2)]


class _DoubleBuffer:
    """Two sets of decode buffers (one array per reader): one is gathered from while the other is decoded into."""

    def __init__(self, readers: list[ChunkReader], sets: list[list[np.ndarray]]) -> None:
        self.readers = readers
        self.sets = sets
        self._pending: list[Future[None]] = []

    @classmethod
    def build(
        cls, inputs: Inputs, rows: int, layer_sets: list[list[np.ndarray]] | None
    ) -> _DoubleBuffer:
        """Use ``layer_sets`` (reused across iterations) or allocate them; add the row-table buffers if needed."""
        readers = list(inputs.readers)
        if layer_sets is None:
            layer_sets = decode_sets(readers, rows)
        if inputs.row_reader is None:
            return cls(readers, layer_sets)
        rows_buf = [np.empty((rows, len(inputs.columns)), dtype=np.int64) for _ in range(2)]
        sets = [[*s[: len(readers)], r] for s, r in zip(layer_sets, rows_buf, strict=True)]
        return cls([*readers, inputs.row_reader], sets)

    def start(self, j: int, ids: np.ndarray) -> None:
        """Start decoding rows ``ids`` (chunk-contiguous) into set ``j % 2``; one decode-pool job per chunk."""
        bufs = self.sets[j % 2]
        chunk = self.readers[0].chunk_index(ids)
        starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]]) if ids.size else np.zeros(0, np.int64)
        bounds = np.r_[starts, ids.size]
        pool = decode_pool()
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            c = int(chunk[a])
            for reader, buf in zip(self.readers, bufs, strict=True):
                self._pending.append(pool.submit(reader.read_chunk_rows, c, ids[a:b], buf[a:b]))

    def finish(self, j: int) -> list[np.ndarray]:
        """Wait for the decode in progress (raising its first error) and return set ``j % 2``."""
        for f in self._pending:
            f.result()  # on an error the jobs stay pending, for abandon()
        self._pending = []
        return self.sets[j % 2]

    def abandon(self) -> None:
        """Cancel the decode in progress and wait for its running jobs, so that none writes into buffers a later
        iteration reuses."""
        pending, self._pending = self._pending, []
        for f in pending:
            f.cancel()
        wait_futures(pending)


# ------------------------------------------------------------------------------------------- batches
class _SlotRing:
    """Which reused output slot the next batch is gathered into, and the device copy last made from each slot.

    Size 0: no ring, every batch is gathered into fresh tensors."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._next = 0
        self._events: list[Any] = [None] * size

    def take(self) -> int | None:
        """The next slot, once the device copy last made from it is done (None: no ring)."""
        if not self.size:
            return None
        slot, self._next = self._next, (self._next + 1) % self.size
        event = self._events[slot]
        if event is not None:  # the last device copy from this slot must be done before it is overwritten
            event.synchronize()
            self._events[slot] = None
        return slot

    def record(self, slot: int | None, event: Any) -> None:
        """The device copy that reads ``slot`` now (a CUDA event, or None)."""
        if slot is not None:
            self._events[slot] = event


def _storage_users(t: torch.Tensor) -> int | None:
    """How many tensors (views, ``.numpy()`` arrays' bases, ...) share ``t``'s memory, ``t`` included; None where
    this torch cannot say."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None
    return int(count(t.untyped_storage()._cdata)) - 1  # less the storage object made to ask


class _Recycler:
    """Output tensors that are the caller's own, without fresh memory for each: a batch's memory is handed out
    again only once nothing refers to it (no tensor, view or numpy array shares its storage) and it was never moved
    to shared memory (sent to another process), so a batch the caller keeps never changes. Fresh memory costs page
    faults on every batch (16 MiB: 4096 of them)."""

    def __init__(self, new: Any, cap: int) -> None:
        self._new = new
        self._cap = cap
        self._pool: list[torch.Tensor] = []

    def take(self) -> torch.Tensor:
        """A tensor nobody else refers to: a recycled one, else a new one (kept for later while under ``cap``)."""
        self._pool = [t for t in self._pool if not t.is_shared()]  # another process may read it: never reused
        for t in self._pool:
            if _storage_users(t) == 1:
                return t
        t = self._new()
        if len(self._pool) < self._cap and _storage_users(t) == 1:
            self._pool.append(t)
        return t


class _LayerOutput:
    """The output tensors of one layer: a ring of reused (optionally pinned) tensors, or ones the caller owns
    (recycled once the caller has let go of them)."""

    def __init__(self, rows: int, width: int, stored: str, out: str, pin: bool, ring: int, keep: int,
                 recyclers: dict[tuple[Any, ...], _Recycler] | None = None) -> None:
        self.rows, self.width, self.stored, self.out, self.pin = rows, width, stored, out, pin
        self.ring = [self._new() for _ in range(ring)]
        key = (rows, width, out, pin)  # a loader's recyclers outlive its iterations: later epochs reuse the memory
        self.fresh = _Recycler(self._new, keep) if recyclers is None else recyclers.setdefault(key, _Recycler(self._new, keep))
        self.scratch = np.empty((rows, width), dtype=DTYPES[stored][1]) if stored != out else None

    def _new(self) -> torch.Tensor:
        return torch.empty((self.rows, self.width), dtype=DTYPES[self.out][0], pin_memory=self.pin)

    def gather(self, buf: np.ndarray, idx: np.ndarray, slot: int | None) -> torch.Tensor:
        """Rows ``idx`` of ``buf``, converted to the output dtype, in ring slot ``slot`` (None: a fresh tensor)."""
        n = idx.size
        out = (self.fresh.take() if slot is None else self.ring[slot])[:n]
        bf16 = self.stored == "bfloat16"
        # torch.index_select: multi-threaded row gather, 5-10x faster than np.take(axis=0) here
        src = torch.from_numpy(buf.view(np.int16) if bf16 else buf)
        index = torch.from_numpy(idx)
        if self.scratch is None:
            torch.index_select(src, 0, index, out=out.view(torch.int16) if bf16 else out)
        else:
            tmp = torch.from_numpy(self.scratch[:n].view(np.int16) if bf16 else self.scratch[:n])
            torch.index_select(src, 0, index, out=tmp)
            out.copy_(tmp.view(torch.bfloat16) if bf16 else tmp)
        return out


class _Assembler:
    """Makes the batch the consumer gets from row positions in a decoded set: gather, move, pack."""

    def __init__(self, inputs: Inputs, cfg: LoaderConfig, reuse: bool,
                 recyclers: list[dict[tuple[Any, ...], _Recycler]] | None = None) -> None:
        self.inputs = inputs
        self.device = torch.device(cfg.device) if cfg.device is not None else None
        self.stream = torch.cuda.Stream(self.device) if self.device is not None and self.device.type == "cuda" else None
        ring = cfg.prefetch + 3 if reuse or self.device is not None else 0
        self.slots = _SlotRing(ring)
        if recyclers is not None:
            recyclers.extend({} for _ in range(len(inputs.readers) - len(recyclers)))
        self.outs = [
            _LayerOutput(cfg.batch_size, r.width, name, cfg.dtype or name, cfg.pin_memory, ring, cfg.prefetch + 4,
                         None if recyclers is None else recyclers[i])
            for i, (r, name) in enumerate(zip(inputs.readers, inputs.dtype_names, strict=True))
        ]

    def batch(self, bufs: list[np.ndarray], idx: np.ndarray) -> tuple[Batch, Any]:
        """The batch of rows ``idx`` of ``bufs``, and the CUDA event its device copy records (or None)."""
        slot = self.slots.take()
        acts = [o.gather(buf, idx, slot) for o, buf in zip(self.outs, bufs[: len(self.outs)], strict=True)]
        acts, event = self._to_device(acts)
        self.slots.record(slot, event)
        result: Batch = dict(zip(self.inputs.layers, acts, strict=True)) if self.inputs.multi else acts[0]
        if self.inputs.row_reader is not None:
            picked = bufs[len(self.outs)][idx]
            rows = {k: torch.from_numpy(np.ascontiguousarray(picked[:, j])) for j, k in enumerate(self.inputs.columns)}
            result = (result, rows)
        return result, event

    def _to_device(self, acts: list[torch.Tensor]) -> tuple[list[torch.Tensor], Any]:
        """Fresh copies on ``device`` (asynchronous on the side stream for CUDA, with the event that ends them)."""
        if self.device is None:
            return acts, None
        if self.stream is None:
            return [a.to(self.device, copy=True) for a in acts], None
        with torch.cuda.stream(self.stream):
            moved = [a.to(self.device, non_blocking=True) for a in acts]
            event = torch.cuda.Event()
            event.record(self.stream)
        return moved, event


# ------------------------------------------------------------------------------------------- the thread
class _Stop(Exception):
    """Raised inside the producer thread when the consumer has asked it to stop."""


class _Producer:
    """The background thread of one iteration: decodes, assembles and queues the batches of a :class:`Work`.

    Every live producer is registered (weakly) so that interpreter exit stops and joins it *before* Python
    finalizes: a daemon thread still inside torch or a codec when the interpreter tears down is killed while
    holding C++ frames, which aborts the process ("terminate called without an active exception", status 134).
    """

    live: weakref.WeakSet[_Producer] = weakref.WeakSet()

    def __init__(self, inputs: Inputs, cfg: LoaderConfig, work: Work, sets: list[list[np.ndarray]] | None,
                 recyclers: list[dict[tuple[Any, ...], _Recycler]] | None = None) -> None:
        self.cfg = cfg
        self.work = work
        self.decode = _DoubleBuffer.build(inputs, work.plan.buffer_rows, sets)
        self.assemble = _Assembler(inputs, cfg, work.reuse, recyclers)
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=cfg.prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="actstore-loader", daemon=True)
        _Producer.live.add(self)
        self.thread.start()

    def _run(self) -> None:
        """The thread body: the batches, then None; or the error that stopped them."""
        try:
            self._produce()
            self._put(None)
        except _Stop:
            self.decode.abandon()
        except BaseException as exc:  # re-raised in the consumer, never swallowed
            self.decode.abandon()
            try:
                self._put(exc)
            except _Stop:
                return

    def _produce(self) -> None:
        plan, ids, size = self.work.plan, self.work.buffer_ids, self.cfg.batch_size
        self.decode.start(0, plan.buffer(ids[0]))
        for j, i in enumerate(ids):
            bufs = self.decode.finish(j)
            if j + 1 < len(ids) and not self.stop.is_set():  # decode the next buffer while this one is gathered
                self.decode.start(j + 1, plan.buffer(ids[j + 1]))
            order = plan.order(i)
            for k in range(self.work.skip if j == 0 else 0, plan.buffer_batches(i)):
                if self.stop.is_set():
                    raise _Stop
                self._put(self.assemble.batch(bufs, order[k * size : (k + 1) * size]))

    def _put(self, item: Any) -> None:
        """Queue ``item`` once there is room; raise :class:`_Stop` if asked to stop meanwhile."""
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop

    def shutdown(self, timeout: float | None = None) -> None:
        """Ask the thread to stop and wait for it (not from the thread itself, nor during finalization)."""
        self.stop.set()
        if threading.current_thread() is not self.thread and not sys.is_finalizing():
            self.thread.join(timeout)
        _Producer.live.discard(self)


@atexit.register
def _shutdown_producers() -> None:
    """Stop every loader thread still running at interpreter exit (e.g. ``next(iter(loader))`` at top level)."""
    for producer in list(_Producer.live):
        producer.stop.set()
    for producer in list(_Producer.live):
        producer.shutdown(timeout=30)


# ------------------------------------------------------------------------------------------- the consumer
def batches(
    inputs: Inputs, cfg: LoaderConfig, work: Work, sets: list[list[np.ndarray]] | None = None,
    recyclers: list[dict[tuple[Any, ...], Any]] | None = None,
) -> Iterator[Batch]:
    """Yield the batches of ``work``, prepared on a background thread that starts at the first ``next``.

    ``sets``: two lists of decode buffers (one per layer, at least ``plan.buffer_rows`` rows) reused across
    iterations; None allocates them. ``recyclers``: per layer, the recycled output memory of earlier iterations
    (filled in here; None: this iteration's own). Host batches are the caller's own tensors unless ``work.reuse``;
    batches moved to ``cfg.device`` are always fresh device tensors, so the host ring is used for them regardless
    (the copy engine reads a slot before it is reused). Closing the iterator, or losing it, stops and joins the thread.
    """
    work = work.remaining()
    if not work.buffer_ids:
        return
    producer = _Producer(inputs, cfg, work, sets, recyclers)
    try:
        while True:
            item = producer.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            result, event = item
            if event is not None:
                _wait_on_device(result, event, producer.assemble.device)
            yield result
    finally:
        producer.shutdown()


def _wait_on_device(result: Batch, event: Any, device: torch.device | None) -> None:
    """Make the consumer's current CUDA stream wait for the batch's copy, and keep its memory alive for it."""
    stream = torch.cuda.current_stream(device)
    stream.wait_event(event)
    acts = result[0] if isinstance(result, tuple) else result
    for t in acts.values() if isinstance(acts, dict) else [acts]:
        if t.device.type == "cuda":
            t.record_stream(stream)
