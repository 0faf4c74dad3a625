"""The writer thread driven by its messages alone (no StoreWriter): what it commits, read back with the public
reader against numpy; a failure is kept, later messages skipped, a Flush's waiter still released."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actstore import ActStore, StoreConfig
from actstore.format._format import acts_key, rows_key
from actstore.format._record import LayerSpec, Layout, Record, RoleSpec
from actstore.storage._backend import create_backend
from actstore.write._messages import Append, Close, Commit, Declare, Flush, Mark, Rollback
from actstore.write._queue import ByteQueue
from actstore.write._write_thread import WriterThread

ROLE = "r"
KEY = acts_key(ROLE, "0")


def _start(path: Path, **config: Any) -> tuple[WriterThread, ByteQueue, Any]:
    cfg = StoreConfig(chunk_rows=16, block_rows=4, **config)
    be = create_backend(path, "zarr", overwrite=False)
    be.lock()
    record = Record.new({}, Layout(cfg.codec, cfg.chunk_rows, cfg.blocks), "test")
    be.write_meta(record.seal(), durable=False)
    queue = ByteQueue(1 << 20)
    thread = WriterThread(be, record, cfg, queue, resumed=False)
    thread.start()
    queue.put(Declare("role", ROLE, RoleSpec(("sample", "step", "position"), (LayerSpec(0, 3, "float32"),))), 0,
              lambda: None)
    return thread, queue, be


def _append(queue: ByteQueue, acts: np.ndarray, first: int) -> None:
    n = acts.shape[0]
    rows = np.stack([np.arange(first, first + n), np.zeros(n, np.int64), np.zeros(n, np.int64)], axis=1)
    queue.put(Append(((rows_key(ROLE), rows), (KEY, acts))), acts.nbytes, lambda: None)


def _mark(n: int) -> Mark:
    return Mark({ROLE: n}, {}, 0, {"rows": n})


def _stop(thread: WriterThread, queue: ByteQueue, be: Any, mark: Mark | None) -> None:
    queue.put(Close(mark), 0, lambda: None)
    thread.join(60)
    assert not thread.is_alive()
    be.close()


def test_messages_in_order_commit_what_was_marked(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    acts = np.random.default_rng(0).standard_normal((45, 3)).astype(np.float32)
    thread, queue, be = _start(path, commit_interval_s=0.0)
    _append(queue, acts[:30], 0)
    queue.put(Commit(_mark(30)), 0, lambda: None)
    _append(queue, acts[30:], 30)  # never marked: Close(None) commits only the pending mark
    _stop(thread, queue, be, None)
    assert thread.error is None
    store = ActStore.open(path)
    assert store.commit["roles"] == {ROLE: 30} and store.commit["progress"] == {"rows": 30}
    np.testing.assert_array_equal(store[0, ROLE][:].numpy(), acts[:30])


def test_rollback_then_flush_and_close_with_a_mark(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    acts = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    thread, queue, be = _start(path, commit_interval_s=3600.0)  # commits only when flushed or closed
    _append(queue, acts[:20], 0)
    done = threading.Event()
    queue.put(Flush(_mark(20), done), 0, lambda: None)
    assert done.wait(60)
    _append(queue, acts[20:27] + 1000, 20)  # a failed batch: rolled back to the flushed mark
    queue.put(Rollback(_mark(20)), 0, lambda: None)
    _append(queue, acts[20:], 20)
    _stop(thread, queue, be, _mark(40))
    assert thread.error is None and thread.nonfinite == {}
    np.testing.assert_array_equal(ActStore.open(path)[0, ROLE][:].numpy(), acts)


def test_first_error_is_kept_and_later_messages_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.zarr"
    thread, queue, be = _start(path, commit_interval_s=0.0)
    boom = OSError(28, "No space left on device")
    calls: list[int] = []

    def fail(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise boom

    monkeypatch.setattr(be, "write_meta", fail)
    _append(queue, np.ones((5, 3), np.float32), 0)
    done = threading.Event()
    queue.put(Flush(_mark(5), done), 0, lambda: None)
    assert done.wait(60)  # released although its commit failed
    queue.put(Commit(_mark(5)), 0, lambda: None)  # skipped: no second write attempt
    _stop(thread, queue, be, _mark(5))
    assert thread.error is boom and calls == [1]


def test_done_waits_for_the_chunks_that_borrow_the_rows(tmp_path: Path) -> None:
    """``done`` of an append whose rows hold whole chunks (encoded from those rows, no copy) comes only after
    those chunks are written: a caller that reuses its buffer at ``done`` (a capture's pinned ring) never changes
    a stored row. Every ``done`` is called exactly once."""
    path = tmp_path / "s.zarr"
    thread, queue, be = _start(path, commit_interval_s=0.0)
    rng = np.random.default_rng(0)
    want, calls, n = [], [], 0
    for i, size in enumerate((5, 300, 17, 1024, 64, 700)):
        acts = rng.standard_normal((size, 3)).astype(np.float32)
        want.append(acts.copy())
        rows = np.zeros((size, 3), np.int64)
        rows[:, 0] = np.arange(n, n + size)

        def done(buf: np.ndarray = acts, i: int = i) -> None:
            calls[i] += 1
            buf[:] = np.nan  # the caller's buffer, reused at once

        calls.append(0)
        queue.put(Append(((rows_key(ROLE), rows), (KEY, acts)), done), acts.nbytes, lambda: None)
        n += size
    _stop(thread, queue, be, _mark(n))
    assert thread.error is None and calls == [1] * 6
    with ActStore.open(path) as store:
        np.testing.assert_array_equal(store[0, ROLE][:].numpy(), np.concatenate(want))


def test_done_is_called_after_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed chunk write (disk full) still gives every append's rows back, borrowed or queued after it."""
    path = tmp_path / "s.zarr"
    thread, queue, be = _start(path, commit_interval_s=0.0)
    monkeypatch.setattr(be, "write_chunk", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    calls: list[int] = []
    for i in range(4):
        acts = np.ones((600, 3), np.float32)
        rows = np.zeros((600, 3), np.int64)
        calls.append(0)
        queue.put(Append(((rows_key(ROLE), rows), (KEY, acts)), lambda i=i: calls.__setitem__(i, calls[i] + 1)),
                  acts.nbytes, lambda: None)
    _stop(thread, queue, be, _mark(2400))
    assert isinstance(thread.error, OSError) and calls == [1] * 4
