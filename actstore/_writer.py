"""``StoreWriter``: appends from the caller's thread, compresses and writes on a background thread.

Commit semantics: data becomes visible to readers (and to a resumed writer) only through the commit record in
the root metadata. A commit is written at a *mark* (every append when ``autocommit``, else every ``commit()``),
at most every ``commit_interval_s``, after every chunk holding the marked rows is on disk; a partly filled chunk
is written whole (rewritten later as it grows, each time atomically). A crash therefore leaves the last commit
intact; rows after it are ignored and overwritten on resume.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import os
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ._backend import Backend
from ._codec import BlockCodec
from ._config import StoreConfig
from ._create import create
from ._errors import SchemaMismatchError, WriterClosedError, WriterFailedError
from ._format import (
    COND_COLUMNS,
    ROW_COLUMNS,
    SAMPLE_KEYS,
    acts_key,
    arrays_of,
    check_name,
    committed_rows,
    cond_acts_key,
    cond_rows_key,
    now_iso,
    rows_key,
    schema_arrays,
    seal_metadata,
)
from ._queue import ByteQueue
from ._rowstats import RowStatsWriter
from ._schema import (
    as_index_column,
    as_int_matrix,
    check_acts,
    encode_prompts,
    natural,
    pad_to,
    row_matrix,
)
from ._tables import ChunkJob, Table, count_nonfinite, encode_chunk, read_rows

__all__ = ["StoreWriter", "create"]

Done = Callable[[], None] | None


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

    def __init__(self, backend: Backend, meta: dict[str, Any], config: StoreConfig, *, resumed: bool) -> None:
        self.path = backend.path
        self.config = config
        self._be = backend
        self._meta = meta
        layout = meta["layout"]
        self._chunk_rows = int(layout["chunk_rows"])
        self._block_rows = int(layout["block_rows"])
        self._codec_name = str(layout["codec"])
        requested = (config.codec, config.chunk_rows, config.blocks)
        defaults = StoreConfig()
        if resumed and requested != (self._codec_name, self._chunk_rows, self._block_rows) and requested != (
            defaults.codec,
            defaults.chunk_rows,
            defaults.blocks,
        ):
            warnings.warn(
                f"resuming {self.path}: keeping its layout {layout}, not the requested codec/chunking",
                stacklevel=3,
            )
        self._schema: dict[str, Any] = copy.deepcopy(
            {"roles": meta["roles"], "conds": meta["conds"], "samples": meta["samples"]}
        )
        """Producer-side schema (the writer thread's ``_meta`` catches up through ``declare`` items)."""
        commit = meta["commit"]
        # producer-side view of what is appended (validated synchronously)
        self._counts: dict[str, Any] = _counts_of(commit)
        """Rows appended so far, shaped like a commit record: ``roles`` / ``conds`` by name, ``samples``."""
        self._progress: dict[str, Any] | None = commit.get("progress")
        self.committed_progress: dict[str, Any] | None = commit.get("progress")
        """The ``progress`` of the last commit when the store was opened (resume from there)."""
        self._last_mark: dict[str, Any] = self._snapshot()
        self._sample_ids: set[int] = set()
        self._new_ids: list[int] = []
        """Sample ids appended since the last mark (forgotten again by ``rollback``)."""
        # writer-thread state
        self._tables: dict[str, Table] = {}
        self._row_stats = RowStatsWriter(backend, meta, self._codec_name, self._chunk_rows, self._block_rows)
        self._pool = ThreadPoolExecutor(max_workers=config.threads or os.cpu_count() or 2, thread_name_prefix="actstore-enc")
        self._inflight: deque[Future[None]] = deque()
        self._pending_mark: dict[str, Any] | None = None
        self._last_commit = time.monotonic()
        self._error: BaseException | None = None
        self._closed = False
        self._queue = ByteQueue(config.queue_bytes)
        if resumed:
            self._load_resume_state()
        self._thread = threading.Thread(target=self._run, name="actstore-writer", daemon=True)
        self._thread.start()
        _OPEN.add(self)

    # ------------------------------------------------------------------------------------------ public API
    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(commit_pending=exc_type is None or self.config.autocommit)

    @property
    def roles(self) -> list[str]:
        return list(self._schema["roles"])

    def append(self, role: str, rows: Mapping[str, Any], acts: Mapping[Any, Any], *, done: Done = None) -> None:
        """Append ``N`` rows of one role: its row table and the activations of all its layers at once."""
        self._check_open()
        check_name(role, "role")
        if not isinstance(acts, Mapping) or not acts:
            raise SchemaMismatchError(f"acts of role {role!r} must be a non-empty mapping of layer to (N, d) tensor")
        spec = self._schema["roles"].get(role)
        layer_names = {check_name(layer, "layer"): layer for layer in acts}
        if spec is not None:
            known = {str(e["layer"]): e for e in spec["layers"]}
            if set(layer_names) != set(known):
                raise SchemaMismatchError(
                    f"role {role!r} holds layers {sorted(known, key=natural)}; an append must give exactly those, "
                    f"got {sorted(layer_names, key=natural)}"
                )
        arrays: list[tuple[str, np.ndarray]] = []
        n: int | None = None
        new_layers = []
        for text, layer in layer_names.items():
            entry = None if spec is None else next(e for e in spec["layers"] if str(e["layer"]) == text)
            arr, dtype = check_acts(
                acts[layer],
                f"layer {layer!r} of role {role!r}",
                None if entry is None else entry["d"],
                None if entry is None else entry["dtype"],
            )
            if n is None:
                n = arr.shape[0]
            elif arr.shape[0] != n:
                raise SchemaMismatchError(f"layers of role {role!r} disagree on the row count: {arr.shape[0]} vs {n}")
            self._check_finite(arr, dtype, f"layer {layer!r} of role {role!r}")
            arrays.append((acts_key(role, text), arr))
            new_layers.append({"layer": layer, "d": int(arr.shape[1]), "dtype": dtype})
        assert n is not None
        mat, columns = row_matrix(rows, n, None if spec is None else spec["columns"], ROW_COLUMNS, f"role {role!r}")
        if spec is None:
            new_layers.sort(key=lambda e: natural(str(e["layer"])))
            self._declare("role", role, {"columns": columns, "layers": new_layers})
        self._put(("append", [(rows_key(role), mat), *arrays], done), ("roles", role), n)

    def append_cond(self, name: str, rows: Mapping[str, Any], acts: Any, *, done: Done = None) -> None:
        """Append conditioning vectors (e.g. ``adarms``), one row per (sample, step)."""
        self._check_open()
        check_name(name, "cond")
        spec = self._schema["conds"].get(name)
        arr, dtype = check_acts(
            acts, f"cond {name!r}", None if spec is None else spec["d"], None if spec is None else spec["dtype"]
        )
        self._check_finite(arr, dtype, f"cond {name!r}")
        mat, _ = row_matrix(rows, arr.shape[0], list(COND_COLUMNS), COND_COLUMNS, f"cond {name!r}")
        if spec is None:
            self._declare("cond", name, {"d": int(arr.shape[1]), "dtype": dtype})
        self._put(("append", [(cond_rows_key(name), mat), (cond_acts_key(name), arr)], done), ("conds", name), arr.shape[0])

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
        spec = self._schema["samples"]
        table, columns = row_matrix({"sample": ids, **extra}, n, None if spec is None else spec["columns"], ("sample",), "samples")
        dup = [int(s) for s in ids if int(s) in self._sample_ids]
        if dup or len(set(ids.tolist())) != n:
            raise SchemaMismatchError(f"sample ids must be unique; already stored or repeated: {sorted(set(dup))[:10]}")
        given = {"prompt": prompt is not None, "prompt_ids": prompt_ids is not None, "instruction_mask": instruction_mask is not None}
        if spec is not None:
            for key, present in given.items():
                if present != spec[key]:
                    raise SchemaMismatchError(
                        f"the samples table {'has' if spec[key] else 'has no'} {key!r}; every append_samples call "
                        f"must {'pass' if spec[key] else 'omit'} it"
                    )
        prompt_len = None if spec is None else spec["prompt_len"]
        arrays: list[tuple[str, np.ndarray]] = [(SAMPLE_KEYS["table"], table)]
        for key in ("instruction_mask", "prompt_ids"):
            value = instruction_mask if key == "instruction_mask" else prompt_ids
            if value is None:
                continue
            mat = as_int_matrix(value, key, n, np.uint8 if key == "instruction_mask" else np.int64)
            if prompt_len is None:
                prompt_len = mat.shape[1]
            mat = pad_to(mat, prompt_len, key)
            arrays.append((SAMPLE_KEYS[key], mat))
        prompt_bytes = None if spec is None else spec["prompt_bytes"]
        if prompt is not None:
            if isinstance(prompt, str) or len(prompt) != n:
                raise SchemaMismatchError(f"prompt must be a list of {n} strings, one per sample")
            prompt_bytes = prompt_bytes or self.config.max_prompt_bytes
            arrays.append((SAMPLE_KEYS["prompt"], encode_prompts(prompt, prompt_bytes)))
        if spec is None:
            self._declare(
                "samples",
                "samples",
                {"columns": columns, "prompt_len": prompt_len, "prompt_bytes": prompt_bytes, **given},
            )
        new = [int(s) for s in ids]
        self._sample_ids.update(new)
        self._new_ids.extend(new)
        self._put(("append", arrays, None), ("samples", None), n)

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
        self._progress = snap["progress"]
        self._queue.put(("rollback", snap, None), 0, self._failed)
        self._raise_if_failed()

    def _mark(self) -> None:
        self._last_mark = self._snapshot()
        self._new_ids.clear()
        self._queue.put(("mark", self._last_mark, None), 0, self._failed)

    def flush(self) -> None:
        """Commit everything appended so far now and wait until it is on disk."""
        self._check_open()
        event = threading.Event()
        self._queue.put(("flush", self._snapshot(), event), 0, self._failed)
        while not event.wait(0.1):
            if not self._thread.is_alive():
                break
        self._raise_if_failed()

    def close(self, *, commit_pending: bool = True) -> None:
        _OPEN.discard(self)
        """Flush the last partial chunks, write the final commit and release the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        final = self._snapshot() if commit_pending else None
        self._queue.put(("close", final, None), 0, lambda: None)
        self._thread.join()
        self._pool.shutdown(wait=True)
        self._be.close()
        self._raise_if_failed()
        bad = self.nonfinite
        if bad:
            warnings.warn(f"{self.path} holds NaN/Inf activations: {bad}", RuntimeWarning, stacklevel=2)

    @property
    def nonfinite(self) -> dict[str, int]:
        """NaN/Inf values counted so far per array (``nonfinite="count"``), as of the last commit."""
        return dict(self._meta["commit"].get("nonfinite", {}))

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

    def _failed(self) -> BaseException | None:
        return self._error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WriterFailedError(f"the background writer of {self.path} failed: {self._error!r}") from self._error

    def _snapshot(self) -> dict[str, Any]:
        return {**_counts_of(self._counts), "progress": self._progress}

    def _declare(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        self._queue.put(("declare", (kind, name, copy.deepcopy(spec)), None), 0, self._failed)
        if kind == "samples":
            self._schema["samples"] = spec
        else:
            self._schema[f"{kind}s"][name] = spec

    def _put(self, item: tuple[str, Any, Any], group: tuple[str, str | None], n: int) -> None:
        nbytes = sum(a.nbytes for _, a in item[1])
        self._queue.put(item, nbytes, self._failed)
        self._raise_if_failed()
        kind, name = group
        if name is None:
            self._counts[kind] += n
        else:
            self._counts[kind][name] = self._counts[kind].get(name, 0) + n
        if self.config.autocommit:
            self._mark()

    # ------------------------------------------------------------------------------- writer-thread side
    def _run(self) -> None:
        while True:
            wait = None
            if self._pending_mark is not None:
                wait = max(0.0, self.config.commit_interval_s - (time.monotonic() - self._last_commit))
            got = self._queue.get(wait)
            if got is None:
                self._guard(self._commit_pending)
                continue
            (kind, payload, extra), nbytes = got
            if self._error is not None:
                self._queue.release(nbytes)
                if kind == "close":
                    return
                if kind == "flush":
                    extra.set()
                continue
            if kind == "append":
                self._guard(self._do_append, payload, extra)
            elif kind == "declare":
                self._guard(self._do_declare, *payload)
            elif kind == "rollback":
                self._guard(self._do_rollback, payload)
            elif kind == "mark":
                self._pending_mark = payload
                if time.monotonic() - self._last_commit >= self.config.commit_interval_s:
                    self._guard(self._commit_pending)
            elif kind == "flush":
                self._pending_mark = payload
                self._guard(self._commit_pending)
                extra.set()
            elif kind == "close":
                if payload is not None:
                    self._pending_mark = payload
                self._guard(self._commit_pending)
                self._guard(self._drain)
                return
            self._queue.release(nbytes)

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        if self._error is not None:
            return
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised on the caller's thread
            self._error = exc

    def _do_declare(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        if kind == "samples":
            self._meta["samples"] = spec
        else:
            self._meta[f"{kind}s"][name] = spec
        for a in arrays_of(kind, name, spec):
            self._add_table(a.key, a.width, a.dtype, a.logical)

    def _table(self, key: str, width: int, dtype: np.dtype, logical: str | None = None) -> Table:
        dtype = np.dtype(dtype)
        codec = BlockCodec(self._codec_name, dtype, checksum=self._be.checksums,
                           block_bytes=self._block_rows * width * dtype.itemsize)
        if self.config.nonfinite == "allow":
            logical = None
        table = Table(key, width, np.dtype(dtype), codec, self._chunk_rows, self._block_rows, logical=logical)
        table.nonfinite_full = int(self._meta["commit"].get("nonfinite", {}).get(key, 0))
        return table

    def _add_table(self, key: str, width: int, dtype: np.dtype, logical: str | None = None) -> None:
        table = self._table(key, width, dtype, logical)
        self._be.create_array(key, width, table.dtype, table.codec, self._chunk_rows, self._block_rows)
        self._tables[key] = table

    def _do_append(self, arrays: list[tuple[str, np.ndarray]], done: Done) -> None:
        jobs: list[ChunkJob] = []
        for key, arr in arrays:
            jobs.extend(self._tables[key].add(arr))
        if done is not None:
            done()
        for job in jobs:
            self._submit(job)

    def _submit(self, job: ChunkJob) -> None:
        table = self._tables[job.key]
        durable = self.config.durable
        self._row_stats.observe(job)

        def work() -> None:  # one task per chunk: encode its blocks, write the file, recycle the buffer
            self._be.write_chunk(job.key, job.chunk, encode_chunk(job, table), durable=durable)
            table.recycle(job)

        try:
            self._inflight.append(self._pool.submit(work))
        except RuntimeError:  # the interpreter is exiting (pools refuse work): write on this thread
            work()
            return
        limit = 2 * self._pool._max_workers + 2  # bounded memory: wait for the oldest chunk
        while len(self._inflight) > limit:
            self._inflight.popleft().result()
        while self._inflight and self._inflight[0].done():
            self._inflight.popleft().result()

    def _do_rollback(self, mark: dict[str, Any]) -> None:
        self._drain()  # rows of earlier chunks are on disk before any is read back
        for key, table in self._tables.items():
            target = committed_rows(key, mark)
            if table.n_rows <= target:
                continue
            start = table.n_rows - table.fill  # first row of the buffered chunk
            if table.buf is not None and target >= start:
                table.rewind(target)
            else:
                fill = target % self._chunk_rows
                table.buf, table.encoded = None, []
                table.n_rows = target
                if fill:
                    table.load_partial(read_rows(self._be, table, target - fill, fill))

    def _drain(self) -> None:
        while self._inflight:
            self._inflight.popleft().result()

    def _commit_pending(self) -> None:
        mark = self._pending_mark
        if mark is None:
            return
        for table in self._tables.values():
            job = table.partial_job()
            if job is not None:
                self._submit(job)
        self._drain()
        for role, spec in self._meta["roles"].items():
            n = mark["roles"].get(role, 0)
            self._be.set_rows(rows_key(role), n)
            for e in spec["layers"]:
                self._be.set_rows(acts_key(role, str(e["layer"])), n)
        for name in self._meta["conds"]:
            n = mark["conds"].get(name, 0)
            self._be.set_rows(cond_rows_key(name), n)
            self._be.set_rows(cond_acts_key(name), n)
        for key in SAMPLE_KEYS.values():
            if key in self._tables:
                self._be.set_rows(key, mark["samples"])
        row_stats = self._row_stats.flush(mark["roles"])
        if self.config.durable:
            self._be.sync()
        commit = self._meta["commit"]
        self._meta["commit"] = {
            "seq": int(commit["seq"]) + 1,
            "time": now_iso(),
            "roles": dict(mark["roles"]),
            "conds": dict(mark["conds"]),
            "samples": int(mark["samples"]),
            "progress": mark["progress"],
            "nonfinite": {k: t.nonfinite for k, t in self._tables.items() if t.logical and t.nonfinite},
            "row_stats": row_stats,
        }
        self._be.write_meta(seal_metadata(self._meta), durable=self.config.durable)
        self._pending_mark = None
        self._last_commit = time.monotonic()

    # ------------------------------------------------------------------------------------------- resume
    def _load_resume_state(self) -> None:
        commit = self._meta["commit"]
        for a, n in schema_arrays(self._meta):
            table = self._table(a.key, a.width, a.dtype, a.logical)
            table.n_rows = n
            fill = n % self._chunk_rows
            if fill:
                table.load_partial(read_rows(self._be, table, n - fill, fill))
            self._tables[a.key] = table
        samples = self._meta["samples"]
        if samples is not None and commit["samples"]:
            ids = read_rows(self._be, self._tables[SAMPLE_KEYS["table"]], 0, int(commit["samples"]))[:, 0]
            self._sample_ids.update(int(s) for s in ids)


def _counts_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the row counts of a commit record or mark (``roles``, ``conds``, ``samples``)."""
    return {"roles": dict(record["roles"]), "conds": dict(record["conds"]), "samples": int(record["samples"])}
