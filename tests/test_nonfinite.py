"""NaN/Inf accounting: the count of some rows (every bit pattern, against torch), and the count a commit records,
which must be that of exactly the committed rows through partial flushes, rollbacks, flushes and resumes."""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import actstore
from actstore.write._nonfinite import NonfiniteCounts, count_nonfinite


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


# ------------------------------------------------------------------------------------------- NonfiniteCounts
def _rows(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    x = rng.standard_normal((n, 3)).astype(np.float32)
    bad = rng.random((n, 3)) < share
    x[bad] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=np.float32), size=int(bad.sum()))
    return x


def _truth(x: np.ndarray) -> int:
    return int((~np.isfinite(x)).sum())


def test_counts_of_committed_rows_only() -> None:
    """A commit inside a block counted further (rows appended after the mark) counts the committed rows again."""
    rng = np.random.default_rng(0)
    x = _rows(rng, 12, 0.3)
    c = NonfiniteCounts("float32", 4)
    c.record(0, x[:4], 4)
    c.record(1, x[4:8], 4)
    padded = np.zeros((4, 3), np.float32)
    padded[:3] = x[8:11]
    c.record(2, padded, 3)  # the partial third block: rows 8..10
    reads: list[tuple[int, int]] = []

    def rows_of(a: int, b: int) -> np.ndarray:
        reads.append((a, b))
        return x[a:b]

    assert c.total() == _truth(x[:11])
    assert c.at(11, rows_of) == _truth(x[:11]) and reads == []  # the record covers exactly these rows
    assert c.at(10, rows_of) == _truth(x[:10]) and reads == [(8, 10)]
    assert c.commit(6, rows_of) == _truth(x[:6])
    assert c.settled_blocks == 1 and c.settled == _truth(x[:4])
    c.forget(2, rows_of)  # a rollback behind the commit: block 0 read back and unsettled
    assert c.settled_blocks == 0 and c.settled == 0 and c.total() == 0
    assert c.at(2, rows_of) == _truth(x[:2])


def test_resume_does_not_count_the_partial_block_twice() -> None:
    rng = np.random.default_rng(1)
    x = _rows(rng, 10, 0.3)
    c = NonfiniteCounts("float32", 4)
    c.resume(_truth(x), 10, x[8:10])  # 10 committed rows; rows 8, 9 are encoded again
    padded = np.zeros((4, 3), np.float32)
    padded[:2] = x[8:10]
    c.record(2, padded, 2)
    assert c.at(10, lambda a, b: x[a:b]) == _truth(x)


# ------------------------------------------------------------------------------------------- the writer
_OPS = st.lists(
    st.one_of(st.tuples(st.just("append"), st.integers(1, 40), st.booleans()),
              st.sampled_from([("commit",), ("rollback",), ("flush",), ("sleep",), ("reopen",), ("check",)])),
    min_size=1, max_size=14)


def _committed_truth(path: Path) -> tuple[int, int]:
    """(commit.nonfinite of the array, NaN/Inf among its committed rows as read back)."""
    with actstore.ActStore.open(path) as store:
        recorded = int(dict(store.record.commit.nonfinite or {}).get("acts/r/0", 0))
        if "r" not in store.roles or store.num_rows("r") == 0:
            return recorded, 0
        return recorded, _truth(store[0, "r"][:].numpy())


@pytest.mark.filterwarnings("ignore:.*NaN/Inf:RuntimeWarning")
@settings(max_examples=25, deadline=None)
@given(ops=_OPS, autocommit=st.booleans(), seed=st.integers(0, 2**32 - 1), suffix=st.sampled_from([".zarr", ".h5"]))
def test_recorded_count_is_that_of_the_committed_rows(ops: list[tuple], autocommit: bool, seed: int,
                                                      suffix: str) -> None:
    """Random appends (NaN/Inf-laden float32, or finite rows passed with ``finite=True``, as a capture that checked
    them on the GPU; with or without ``done``, i.e. whole chunks borrowed or copied), commits, rollbacks, flushes, interval commits (sleeps) and resumes on a store (Zarr or HDF5)
    of 16-row chunks and 4-row blocks: every commit record's NaN/Inf count equals that of the rows it commits,
    counted again from the store."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        path = Path(tmp) / f"s{suffix}"
        kw = dict(chunk_rows=16, block_rows=4, autocommit=autocommit, commit_interval_s=0.02)
        w = actstore.create(path, **kw)
        n = 0
        try:
            for op in ops:
                if op[0] == "append":
                    checked = op[2]
                    x = _rows(rng, op[1], 0.0 if checked else 0.2)
                    r = np.arange(n, n + op[1])
                    lend = rng.random() < 0.5  # with done: whole chunks encoded from the rows themselves
                    w.append("r", rows={"sample": r, "step": np.zeros(op[1], np.int64), "position": r},
                             acts={0: torch.from_numpy(x)}, finite=checked, done=(lambda: None) if lend else None)
                    n += op[1]
                elif op[0] == "commit":
                    w.commit()
                elif op[0] == "rollback":
                    w.rollback()
                elif op[0] == "flush":
                    w.flush()
                elif op[0] == "sleep":
                    time.sleep(0.03)  # an interval commit of the pending mark, with later rows in the buffers
                elif op[0] == "reopen":
                    w.close()
                    w = actstore.create(path, resume=True, **kw)
                    with actstore.ActStore.open(path) as store:
                        n = store.num_rows("r") if "r" in store.roles else 0
                elif suffix == ".zarr":  # an HDF5 store is assembled from its staging files on close
                    recorded, truth = _committed_truth(path)
                    assert recorded == truth
        finally:
            w.close()
        recorded, truth = _committed_truth(path)
        assert recorded == truth


def test_rows_checked_by_the_caller_are_not_counted_again(tmp_path: Path) -> None:
    """``append(..., finite=True)``: the encode threads skip the blocks that hold only such rows (the writer trusts
    the caller's check: rows passed as checked are not scanned, here shown with NaN rows passed as checked), and
    count every block that holds one unchecked row, the checked rows in it too; ``nonfinite="reject"`` does not
    scan them either."""
    nan = np.full((4, 3), np.nan, np.float32)
    ok = np.ones((2, 3), np.float32)

    def rows(lo: int, n: int) -> dict[str, np.ndarray]:
        r = np.arange(lo, lo + n)
        return {"sample": r, "step": np.zeros(n, np.int64), "position": r}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with actstore.create(tmp_path / "a.zarr", chunk_rows=16, block_rows=4) as w:
            w.append("r", rows=rows(0, 4), acts={0: nan}, finite=True)  # block 0: checked rows only
            w.append("r", rows=rows(4, 2), acts={0: nan[:2]}, finite=True)  # block 1: checked ...
            w.append("r", rows=rows(6, 2), acts={0: ok}, finite=False)  # ... and unchecked: counted whole
            w.append_cond("c", rows={"sample": np.arange(4), "step": np.zeros(4, np.int64)}, acts=nan, finite=True)
        with actstore.create(tmp_path / "b.zarr", nonfinite="reject") as w:
            w.append("r", rows=rows(0, 4), acts={0: nan}, finite=True)
    with actstore.ActStore.open(tmp_path / "a.zarr") as store:
        assert dict(store.record.commit.nonfinite or {}) == {"acts/r/0": 6}
