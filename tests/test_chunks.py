"""Writer-thread chunk buffers: chunk filling, partial flushes, encoded-block reuse and NaN/Inf counting."""

from __future__ import annotations

import numpy as np

from actstore.format._codec import BlockCodec
from actstore.write._chunks import ChunkBuffer, encode_block


def _table(logical: str | None = None) -> ChunkBuffer:
    return ChunkBuffer("acts/r/0", 3, np.dtype("<f4"), BlockCodec("lz4", np.dtype("<f4")), 8, 4, logical=logical)


def test_add_returns_full_chunks_and_keeps_the_rest() -> None:
    t = _table()
    jobs = t.add(np.arange(60, dtype="<f4").reshape(20, 3))
    assert [(j.chunk, j.fill, j.final) for j in jobs] == [(0, 8, True), (1, 8, True)]
    assert t.n_rows == 20 and t.fill == 4
    np.testing.assert_array_equal(jobs[1].buf, np.arange(24, 48, dtype="<f4").reshape(8, 3))


def test_partial_job_only_when_something_new() -> None:
    t = _table()
    t.add(np.ones((5, 3), dtype="<f4"))
    job = t.partial_job()
    assert job is not None and (job.chunk, job.fill, job.final) == (0, 5, False)
    assert t.partial_job() is None
    full = encode_block(job, t, 0)
    padded = encode_block(job, t, 1)
    assert job.cached[0] == full and job.cached[1] is None  # a partial block is never cached
    out = np.empty((4, 3), dtype="<f4")
    t.codec.decode(b"".join(padded), out)
    np.testing.assert_array_equal(out, [[1, 1, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]])


def test_partial_block_counts_are_replaced_not_added() -> None:
    t = _table("float32")
    rows = np.zeros((3, 3), dtype="<f4")
    rows[0, 0] = np.nan
    t.add(rows)
    for _ in range(2):
        job = t.partial_job() or t.partial_job()
        if job is not None:
            encode_block(job, t, 0)
        t.add(np.zeros((0, 3), dtype="<f4"))
    assert t.nonfinite == 1
    job = t.add(np.full((5, 3), np.inf, dtype="<f4"))[0]
    encode_block(job, t, 0)
    encode_block(job, t, 1)
    assert t.nonfinite == 1 + 3 + 12


def test_whole_chunks_inside_an_append_are_borrowed_not_copied() -> None:
    """With ``borrow`` (an append with a ``done`` callback), a chunk that lies wholly inside one append (C-contiguous,
    the array's dtype) is encoded from the appended rows themselves; the rest is copied; a strided or differently
    typed append, or one without ``borrow``, is copied; borrowed rows are never recycled as chunk buffers; the
    encoded bytes are those of the copied path."""
    rows = np.arange(60 * 3, dtype="<f4").reshape(60, 3)
    assert not any(j.borrowed for j in _table().add(rows))
    t = _table()
    t.add(rows[:3], borrow=True)  # fill 3: the next chunk straddles two appends
    jobs = t.add(rows[3:40], borrow=True)  # rows 3..39: chunk 0 (rows 0..7) copied, chunks 1..4 (8..39) inside
    assert [(j.chunk, j.borrowed) for j in jobs] == [(0, False), (1, True), (2, True), (3, True), (4, True)]
    assert not np.shares_memory(jobs[0].buf, rows) and all(np.shares_memory(j.buf, rows) for j in jobs[1:])
    copied = _table()
    copied.add(np.array(rows[:3]))
    ref = copied.add(np.asfortranarray(rows[3:40]), borrow=True)  # not C-contiguous: every chunk copied
    assert not any(j.borrowed for j in ref)
    for mine, theirs in zip(jobs, ref, strict=True):
        assert [bytes(b) for b in encode_block(mine, t, 1)] == [bytes(b) for b in encode_block(theirs, copied, 1)]
    assert not any(j.borrowed for j in _table().add(np.arange(48, dtype="<f8").reshape(16, 3), borrow=True))  # dtype
    for j in jobs:
        t.recycle(j)
    assert len(t.free) == 1 and not np.shares_memory(t.free[0], rows)
