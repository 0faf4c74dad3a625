"""``StoreWriter``: the producer side of a store's writer, on the caller's thread.

Each public method checks its input against the schema declared so far (refusing what would be stored wrong),
updates the producer's row counts and puts one message (:mod:`actstore.write._messages`) on a queue bounded by bytes
(backpressure). The writer thread (:mod:`actstore.write._write_thread`) compresses, writes and commits; its first
failure is re-raised, as :class:`WriterFailedError`, by the next call or by ``close()``. See
:mod:`actstore.write._write_thread` for what a commit makes visible.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import threading
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import SchemaMismatchError, WriterClosedError, WriterFailedError
from ..format._format import (
    COND_COLUMNS,
    ROW_COLUMNS,
    SAMPLE_KEYS,
    acts_key,
    check_name,
    cond_acts_key,
    cond_rows_key,
    rows_key,
)
from ..format._record import CondSpec, LayerSpec, Record, RoleSpec, SamplesSpec, Spec, thaw
from ..storage._backend import Backend
from ._config import StoreConfig
from ._messages import Append, Close, Commit, Declare, Done, Flush, Mark, Message, Rollback
from ._nonfinite import count_nonfinite
from ._queue import ByteQueue
from ._schema import (
    as_index_column,
    as_int_matrix,
    check_acts,
    encode_prompts,
    natural,
    pad_to,
    row_matrix,
)
from ._write_thread import WriterThread

__all__ = ["StoreWriter"]


_OPEN: weakref.WeakSet[StoreWriter] = weakref.WeakSet()
"""Writers not closed yet: closed (and committed) at interpreter exit, so a forgotten ``close()`` loses nothing."""


@atexit.register
def _close_open_writers() -> None:
    for writer in list(_OPEN):
        warnings.warn(f"closing the writer of {writer.path} at exit: call close() or use 'with'", stacklevel=1)
        with contextlib.suppress(Exception):
            writer.close()


class StoreWriter:
    """Appends activations, row tables, conditioning and per-sample tables to one store.

    Use :func:`create` to get one. Appends return as soon as the data is queued (the caller must not modify the
    arrays afterwards; pass ``done`` to learn when the writer no longer needs them). A failure on the background
    thread is re-raised, as :class:`WriterFailedError`, by the next call or by ``close()``.
    """

    def __init__(self, backend: Backend, record: Record, config: StoreConfig, *, resumed: bool) -> None:
        self.path = backend.path
        self.config = config
        self._be = backend
        layout = record.layout
        requested = (config.codec, config.chunk_rows, config.blocks)
        defaults = StoreConfig()
        stored = (layout.codec, layout.chunk_rows, layout.block_rows)
        if resumed and requested != stored and requested != (defaults.codec, defaults.chunk_rows, defaults.blocks):
            warnings.warn(
                f"resuming {self.path}: keeping its layout {layout.to_json()}, not the requested codec/chunking",
                stacklevel=3,
            )
        self._schema = record
        """Producer-side schema: its roles / conds / samples (the writer thread's record catches up through
        ``Declare`` messages)."""
        commit = record.commit
        self._counts: dict[str, Any] = _counts_of(Mark.of(commit))
        """Rows appended so far, shaped like a commit record: ``roles`` / ``conds`` by name, ``samples``."""
        self._progress: dict[str, Any] | None = thaw(commit.progress)
        self.committed_progress: dict[str, Any] | None = thaw(commit.progress)
        """The ``progress`` of the last commit when the store was opened (resume from there)."""
        self._last_mark = self._snapshot()
        self._new_ids: list[int] = []
        """Sample ids appended since the last mark (forgotten again by ``rollback``)."""
        self._closed = False
        self._queue: ByteQueue[Message] = ByteQueue(config.queue_bytes)
        self._thread = WriterThread(backend, record, config, self._queue, resumed=resumed)
        self._sample_ids: set[int] = set(self._thread.committed_sample_ids())
        self._thread.start()
        _OPEN.add(self)

    # ------------------------------------------------------------------------------------------ public API
    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(commit_pending=exc_type is None or self.config.autocommit)

    @property
    def roles(self) -> list[str]:
        return list(self._schema.roles)

    def append(self, role: str, rows: Mapping[str, Any], acts: Mapping[Any, Any], *, done: Done = None,
               finite: bool = False) -> None:
        """Append ``N`` rows of one role: its row table and the activations of all its layers at once.

        ``finite=True`` says the caller has checked that ``acts`` hold no NaN/Inf (a capture does it on the GPU,
        before the copy), so the writer does not count them again; a wrong ``True`` makes the store's NaN/Inf count
        (``commit.nonfinite``) wrong, so pass it only for a check the caller made."""
        self._check_open()
        check_name(role, "role")
        spec = self._schema.roles.get(role)
        arrays, n, layers = self._layer_arrays(role, acts, spec, finite)
        mat, columns = row_matrix(rows, n, None if spec is None else list(spec.columns), ROW_COLUMNS, f"role {role!r}")
        if spec is None:
            self._declare("role", role, RoleSpec(tuple(columns), tuple(layers)))
        self._put(Append(((rows_key(role), mat), *arrays), done, finite), ("roles", role), n)

    def append_cond(self, name: str, rows: Mapping[str, Any], acts: Any, *, done: Done = None,
                    finite: bool = False) -> None:
        """Append conditioning vectors (e.g. ``adarms``), one row per (sample, step); ``finite`` as for
        :meth:`append`."""
        self._check_open()
        check_name(name, "cond")
        spec = self._schema.conds.get(name)
        arr, dtype = check_acts(acts, f"cond {name!r}", None if spec is None else spec.d, None if spec is None else spec.dtype)
        if not finite:
            self._check_finite(arr, dtype, f"cond {name!r}")
        mat, _ = row_matrix(rows, arr.shape[0], list(COND_COLUMNS), COND_COLUMNS, f"cond {name!r}")
        if spec is None:
            self._declare("cond", name, CondSpec(int(arr.shape[1]), dtype))
        self._put(Append(((cond_rows_key(name), mat), (cond_acts_key(name), arr)), done, finite), ("conds", name), arr.shape[0])

    def append_samples(
        self,
        sample: Any,
        *,
        prompt: list[str] | None = None,
        prompt_ids: Any = None,
        instruction_mask: Any = None,
        **extra: Any,
    ) -> None:
        """Append per-sample context: ids (unique), prompt text and/or token ids, the instruction mask, int columns."""
        self._check_open()
        ids = as_index_column(sample, "sample", None)
        n = ids.shape[0]
        spec = self._schema.samples
        table, columns = row_matrix({"sample": ids, **extra}, n, None if spec is None else list(spec.columns), ("sample",),
                                    "samples")
        dup = [int(s) for s in ids if int(s) in self._sample_ids]
        if dup or len(set(ids.tolist())) != n:
            raise SchemaMismatchError(f"sample ids must be unique; already stored or repeated: {sorted(set(dup))[:10]}")
        given = {"prompt": prompt is not None, "prompt_ids": prompt_ids is not None, "instruction_mask": instruction_mask is not None}
        if spec is not None:
            for key, present in given.items():
                kept = getattr(spec, key)
                if present != kept:
                    raise SchemaMismatchError(
                        f"the samples table {'has' if kept else 'has no'} {key!r}; every append_samples call "
                        f"must {'pass' if kept else 'omit'} it"
                    )
        context, prompt_len, prompt_bytes = self._context_arrays(n, spec, prompt, prompt_ids, instruction_mask)
        if spec is None:
            self._declare("samples", "samples", SamplesSpec(tuple(columns), prompt_len, prompt_bytes, **given))
        new = [int(s) for s in ids]
        self._sample_ids.update(new)
        self._new_ids.extend(new)
        self._put(Append(((SAMPLE_KEYS["table"], table), *context)), ("samples", None), n)

    def commit(self, progress: Mapping[str, Any] | None = None) -> None:
        """Mark a consistent point; everything appended so far becomes visible together (within the interval)."""
        self._check_open()
        if progress is not None:
            try:
                json.dumps(dict(progress))
            except (TypeError, ValueError) as exc:
                raise SchemaMismatchError(f"progress must be JSON-serialisable: {exc}") from None
            self._progress = dict(progress)
        self._mark()

    def rollback(self) -> None:
        """Drop everything appended since the last mark (the last ``commit()``), e.g. after a failed batch."""
        self._check_open()
        snap = self._last_mark
        self._counts = _counts_of(snap)
        self._sample_ids.difference_update(self._new_ids)
        self._new_ids.clear()
        self._progress = snap.progress
        self._queue.put(Rollback(snap), 0, self._failed)
        self._raise_if_failed()

    def flush(self) -> None:
        """Commit everything appended so far now and wait until it is on disk."""
        self._check_open()
        event = threading.Event()
        self._queue.put(Flush(self._snapshot(), event), 0, self._failed)
        while not event.wait(0.1):
            if not self._thread.is_alive() or self._thread.error is not None:
                break  # a failed writer thread skips the flush: raised below
        self._raise_if_failed()

    def close(self, *, commit_pending: bool = True) -> None:
        """Write the last partial chunks and the final commit, wait for the writer thread, release the store.

        The final commit holds everything appended, or with ``commit_pending=False`` only what the last
        ``commit()`` marked (leaving a ``with`` block by an exception does that unless ``autocommit``). A failure of
        the writer thread is raised as :class:`WriterFailedError` (the store then holds its last good commit); a
        :class:`RuntimeWarning` names the arrays that hold NaN/Inf values. Calling it again does nothing.
        """
        _OPEN.discard(self)
        if self._closed:
            return
        self._closed = True
        self._queue.put(Close(self._snapshot() if commit_pending else None), 0, lambda: None)
        self._thread.join()
        self._be.close()
        self._raise_if_failed()
        bad = self.nonfinite
        if bad:
            warnings.warn(f"{self.path} holds NaN/Inf activations: {bad}", RuntimeWarning, stacklevel=2)

    @property
    def nonfinite(self) -> dict[str, int]:
        """NaN/Inf values counted so far per array (``nonfinite="count"``), as of the last commit."""
        return self._thread.nonfinite

    # ----------------------------------------------------------------------------------- producer helpers
    def _check_finite(self, arr: np.ndarray, dtype: str, what: str) -> None:
        if self.config.nonfinite != "reject":
            return
        bad = count_nonfinite(arr, dtype)
        if bad:
            raise SchemaMismatchError(
                f"activations of {what} hold {bad} NaN/Inf values; refused (StoreConfig.nonfinite='reject'; "
                "use 'count' to store and count them)"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise WriterClosedError(f"the writer of {self.path} is closed")
        self._raise_if_failed()

    def _layer_arrays(self, role: str, acts: Mapping[Any, Any], spec: RoleSpec | None, finite: bool,
                      ) -> tuple[list[tuple[str, np.ndarray]], int, list[LayerSpec]]:
        """The checked activations of every layer of one append: (key, rows) pairs, the row count and the layer
        entries of a role's spec (in natural layer order; used when ``spec`` is None, i.e. a new role)."""
        if not isinstance(acts, Mapping) or not acts:
            raise SchemaMismatchError(f"acts of role {role!r} must be a non-empty mapping of layer to (N, d) tensor")
        layer_names = {check_name(layer, "layer"): layer for layer in acts}
        if spec is not None:
            known = {str(e.layer): e for e in spec.layers}
            if set(layer_names) != set(known):
                raise SchemaMismatchError(
                    f"role {role!r} holds layers {sorted(known, key=natural)}; an append must give exactly those, "
                    f"got {sorted(layer_names, key=natural)}"
                )
        arrays: list[tuple[str, np.ndarray]] = []
        n: int | None = None
        layers = []
        for text, layer in layer_names.items():
            entry = None if spec is None else next(e for e in spec.layers if str(e.layer) == text)
            arr, dtype = check_acts(
                acts[layer],
                f"layer {layer!r} of role {role!r}",
                None if entry is None else entry.d,
                None if entry is None else entry.dtype,
            )
            if n is None:
                n = arr.shape[0]
            elif arr.shape[0] != n:
                raise SchemaMismatchError(f"layers of role {role!r} disagree on the row count: {arr.shape[0]} vs {n}")
            if not finite:
                self._check_finite(arr, dtype, f"layer {layer!r} of role {role!r}")
            arrays.append((acts_key(role, text), arr))
            layers.append(LayerSpec(layer, int(arr.shape[1]), dtype))
        assert n is not None
        layers.sort(key=lambda e: natural(str(e.layer)))
        return arrays, n, layers

    def _context_arrays(self, n: int, spec: SamplesSpec | None, prompt: list[str] | None, prompt_ids: Any,
                        instruction_mask: Any) -> tuple[list[tuple[str, np.ndarray]], int | None, int | None]:
        """The instruction mask, prompt ids and prompt text of ``n`` samples as (key, rows) pairs, padded to the
        samples table's ``prompt_len`` / ``prompt_bytes`` (set by the first call), and those two widths."""
        prompt_len = None if spec is None else spec.prompt_len
        arrays: list[tuple[str, np.ndarray]] = []
        for key in ("instruction_mask", "prompt_ids"):
            value = instruction_mask if key == "instruction_mask" else prompt_ids
            if value is None:
                continue
            mat = as_int_matrix(value, key, n, np.uint8 if key == "instruction_mask" else np.int64)
            if prompt_len is None:
                prompt_len = mat.shape[1]
            arrays.append((SAMPLE_KEYS[key], pad_to(mat, prompt_len, key)))
        prompt_bytes = None if spec is None else spec.prompt_bytes
        if prompt is not None:
            if isinstance(prompt, str) or len(prompt) != n:
                raise SchemaMismatchError(f"prompt must be a list of {n} strings, one per sample")
            prompt_bytes = prompt_bytes or self.config.max_prompt_bytes
            arrays.append((SAMPLE_KEYS["prompt"], encode_prompts(prompt, prompt_bytes)))
        return arrays, prompt_len, prompt_bytes

    def _failed(self) -> BaseException | None:
        return self._thread.error

    def _raise_if_failed(self) -> None:
        error = self._thread.error
        if error is not None:
            raise WriterFailedError(f"the background writer of {self.path} failed: {error!r}") from error

    def _snapshot(self) -> Mark:
        """The rows appended so far and the current progress."""
        counts = self._counts
        return Mark(dict(counts["roles"]), dict(counts["conds"]), int(counts["samples"]), self._progress)

    def _mark(self) -> None:
        """A consistent point: the rollback target, committed by the writer thread within the interval."""
        self._last_mark = self._snapshot()
        self._new_ids.clear()
        self._queue.put(Commit(self._last_mark), 0, self._failed)

    def _declare(self, kind: str, name: str, spec: Spec) -> None:
        """Tell the writer thread about a new role / cond / samples table and remember it."""
        self._queue.put(Declare(kind, name, spec), 0, self._failed)
        self._schema = self._schema.with_spec(kind, name, spec)

    def _put(self, message: Append, group: tuple[str, str | None], n: int) -> None:
        """Queue ``message`` (waiting while the queue holds ``queue_bytes``) and count its ``n`` rows."""
        self._queue.put(message, sum(a.nbytes for _, a in message.arrays), self._failed)
        self._raise_if_failed()
        kind, name = group
        if name is None:
            self._counts[kind] += n
        else:
            self._counts[kind][name] = self._counts[kind].get(name, 0) + n
        if self.config.autocommit:
            self._mark()


def _counts_of(mark: Mark) -> dict[str, Any]:
    """The producer's mutable row counts (``roles``, ``conds`` by name, ``samples``), from a mark."""
    return {"roles": dict(mark.roles), "conds": dict(mark.conds), "samples": int(mark.samples)}
