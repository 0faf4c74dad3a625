"""Writer-thread chunk buffers: chunk filling, partial flushes, encoded-block reuse and NaN/Inf counting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore.format._codec import BlockCodec
from actstore.write._chunks import ChunkBuffer, count_nonfinite, encode_block


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


@pytest.mark.parametrize("logical, dtype", [("bfloat16", "<u2"), ("float32", "<f4"), ("float16", "<f2")])
def test_count_nonfinite(logical: str, dtype: str) -> None:
    import torch

    x = torch.tensor([[1.0, float("nan"), float("inf")], [-float("inf"), 0.0, -3.0e38]])
    if logical == "bfloat16":
        arr = x.to(torch.bfloat16).view(torch.uint16).numpy()
    else:
        with np.errstate(over="ignore"):
            arr = x.numpy().astype(dtype)
    expected = 3 if logical != "float16" else 4  # -3.0e38 overflows float16 to -inf
    assert count_nonfinite(arr, logical) == expected


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


@pytest.mark.parametrize("logical", ["bfloat16", "float16"])
def test_count_nonfinite_over_every_bit_pattern(logical: str) -> None:
    """Every 16-bit pattern, alone in a block and all together, against torch's own isfinite on the same bits."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    values = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16 if logical == "bfloat16" else torch.float16)
    bad = ~torch.isfinite(values.float()).numpy()
    storage = bits if logical == "bfloat16" else bits.view(np.float16)
    assert count_nonfinite(storage.reshape(256, 256), logical) == int(bad.sum())
    for i in np.flatnonzero(bad)[::97].tolist() + np.flatnonzero(~bad)[::997].tolist():
        block = np.zeros((4, 8), dtype=storage.dtype)
        block[2, 5] = storage[i]
        assert count_nonfinite(block, logical) == int(bad[i]), hex(int(bits[i]))


def test_count_nonfinite_float32() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    assert count_nonfinite(x, "float32") == 0
    x[3, 4], x[10, 0], x[63, 31] = np.nan, np.inf, -np.inf
    x[5, 5] = np.float32(3.4e38)  # the largest finite values stay finite
    assert count_nonfinite(x, "float32") == 3
    special = np.array([0x7F800000, 0xFF800000, 0x7FC00001, 0xFFFFFFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x80000000],
                       dtype=np.uint32).view(np.float32)
    assert count_nonfinite(special.reshape(1, -1), "float32") == 4
