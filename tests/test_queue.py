"""ByteQueue: FIFO, bounded by bytes, never blocks on one oversized item, gives up when the writer failed."""

from __future__ import annotations

import threading
import time

from actstore.write._queue import ByteQueue


def test_fifo_and_byte_bound() -> None:
    q = ByteQueue(cap=100)
    q.put("a", 60, lambda: None)
    done = threading.Event()

    def producer() -> None:
        q.put("b", 60, lambda: None)  # blocks: 60 + 60 > 100 while "a" is held
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(0.2)
    assert not done.is_set()
    assert q.get(1.0) == ("a", 60)
    q.release(60)
    t.join(2)
    assert done.is_set() and q.get(1.0) == ("b", 60)
    assert q.get(0.01) is None


def test_oversized_item_is_admitted_when_empty_and_failure_unblocks() -> None:
    q = ByteQueue(cap=10)
    q.put("huge", 1000, lambda: None)  # an empty queue takes anything
    failed = threading.Event()
    t = threading.Thread(target=lambda: q.put("x", 5, lambda: RuntimeError("writer died") if failed.is_set() else None))
    t.start()
    time.sleep(0.2)
    failed.set()
    t.join(2)
    assert not t.is_alive()  # gave up instead of waiting forever for a dead writer
