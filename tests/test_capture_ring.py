"""The host buffer pool: reuse, bounds and backpressure."""

from __future__ import annotations

import threading
import warnings

import pytest

from capture._ring import BufferPool


def test_reuses_released_buffers():
    pool = BufferPool(1 << 20)
    a = pool.acquire(1000)
    pool.release(a)
    b = pool.acquire(900)
    assert b.data_ptr() == a.data_ptr() and pool.allocated_bytes == 1000


def test_full_pool_waits_for_release_and_warns_once():
    pool = BufferPool(2000)
    a = pool.acquire(1000)
    pool.acquire(1000)
    threading.Timer(0.05, pool.release, args=(a,)).start()
    with pytest.warns(RuntimeWarning, match="backpressure"):
        c = pool.acquire(1000)
    assert c.data_ptr() == a.data_ptr() and pool.waits >= 1
    pool.release(c)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool.acquire(1000)  # free buffer available: no wait, no warning


def test_drain_callback_is_used_while_full():
    pool = BufferPool(1000)
    a = pool.acquire(1000)
    calls = []

    def drain():
        calls.append(1)
        pool.release(a)
        return True

    with pytest.warns(RuntimeWarning):
        assert pool.acquire(500, drain).data_ptr() == a.data_ptr()
    assert calls == [1]


def test_times_out_when_nothing_is_released():
    pool = BufferPool(1000)
    pool.acquire(1000)
    with pytest.warns(RuntimeWarning), pytest.raises(TimeoutError, match="1000"):
        pool.acquire(1000, timeout=0.1)


def test_reserve_preallocates_within_capacity():
    pool = BufferPool(2500)
    pool.reserve(1000, 3)
    assert pool.allocated_bytes == 2000
    a = pool.acquire(1000)
    assert pool.allocated_bytes == 2000 and a.numel() == 1000
