"""Per-chunk row statistics written with each commit: exact after appends and resume, safe after a rollback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import actstore
from actstore.read._stats import chunk_stats


def reference(table: dict[str, np.ndarray], columns: list[str], cr: int) -> np.ndarray:
    """Per-chunk [min..., max...] of the row table, straight from numpy."""
    mat = np.stack([table[c] for c in columns], axis=1)
    return np.stack([chunk_stats(mat[i : i + cr]) for i in range(0, mat.shape[0], cr)])


def append(w: actstore.StoreWriter, lo: int, hi: int, offset: int = 0) -> None:
    r = np.arange(lo, hi)
    w.append("decision", rows={"sample": r // 7 + offset, "step": r % 4, "position": r % 7, "episode": r // 50},
             acts={0: torch.zeros(hi - lo, 2)})


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_stats_match_numpy_after_appends_and_resume(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"s.{suffix}"
    with actstore.create(path, chunk_rows=64, block_rows=16) as w:
        for lo in range(0, 500, 130):
            append(w, lo, min(500, lo + 130))
    first = actstore.open(path)
    assert first.commit["row_stats"] == {"decision": -(-500 // 64)}
    assert np.array_equal(first.index("decision").stats(), reference(first.rows("decision"), first.index("decision").columns, 64))
    assert first.index("decision").chunks_read == 1  # stored, not recomputed, but for the last, partial chunk
    first.close()
    with actstore.create(path, resume=True) as w:  # the partly filled chunk grows, later chunks are new
        append(w, 500, 777)
    store = actstore.open(path)
    index = store.index("decision")
    if suffix == "zarr":  # (an HDF5 store resumes through a staging copy, which carries no stats: computed)
        assert store.commit["row_stats"] == {"decision": -(-777 // 64)}
    want = reference(store.rows("decision"), index.columns, 64)
    assert np.array_equal(index.stats(), want)


def test_stats_stay_a_safe_superset_after_rollback(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    with actstore.create(path, chunk_rows=64, block_rows=16, autocommit=False) as w:
        append(w, 0, 100)
        w.commit()
        append(w, 100, 180, offset=10_000)  # rolled back: its samples must not be lost from the ranges
        w.rollback()
        append(w, 100, 150)
        w.commit()
    store = actstore.open(path)
    index = store.index("decision")
    got, want = index.stats(), reference(store.rows("decision"), index.columns, 64)
    c = len(index.columns)
    assert got.shape == want.shape
    assert np.all(got[:, :c] <= want[:, :c]) and np.all(got[:, c:] >= want[:, c:])
    sel = store.select(0, "decision", sample=[3, 20])  # the filter is still exact
    r = store.rows("decision")
    assert np.array_equal(sel.row_index, np.flatnonzero(np.isin(r["sample"], [3, 20])))


def test_the_record_holds_the_crc32c_of_each_stats_chunk(tmp_path: Path) -> None:
    """``commit.row_stats_crc32c``: the crc32c of the committed rows of each stats chunk, over several stats chunks
    and across a resume (numpy stats and the crc32c package as the references)."""
    import crc32c

    path = tmp_path / "s.zarr"
    with actstore.create(path, chunk_rows=4, block_rows=2) as w:  # 4 stats rows per stats chunk: 11 stats chunks
        for lo in range(0, 130, 37):
            append(w, lo, min(130, lo + 37))
    with actstore.create(path, resume=True) as w:
        append(w, 130, 171)
    with actstore.open(path) as store:
        want = reference(store.rows("decision"), store.index("decision").columns, 4)
        assert np.array_equal(store.index("decision").stats(), want)
        got = store.commit["row_stats_crc32c"]["decision"]
    full = want[: 171 // 4]  # the stats rows of full row-table chunks (the last, partial one is not covered)
    assert got == [crc32c.crc32c(np.ascontiguousarray(full[s : s + 4]).tobytes()) for s in range(0, len(full), 4)]


def test_swapped_stats_are_an_error_not_a_skipped_match(tmp_path: Path) -> None:
    """Stats chunks of two roles swapped pass their own crc32c; the record's crc32c catches them before a filter
    skips a chunk that matches."""
    import shutil

    path = tmp_path / "s.zarr"
    with actstore.create(path, chunk_rows=64, block_rows=16) as w:
        append(w, 0, 200)
        r = np.arange(200)
        w.append("other", rows={"sample": r // 7 + 500, "step": r % 4, "position": r % 7, "episode": r // 50},
                 acts={0: torch.zeros(200, 2)})
    for f in ("c/0/0",):
        a, b = path / "rowstats/decision" / f, path / "rowstats/other" / f
        tmp = path / "swap.tmp"
        shutil.copyfile(a, tmp)
        shutil.copyfile(b, a)
        shutil.copyfile(tmp, b)
        tmp.unlink()
    with actstore.open(path) as store, pytest.raises(actstore.CorruptStoreError, match="rowstats/decision"):
        store.select(0, "decision", sample=[3, 20])
    assert not actstore.verify(path).ok


def test_filters_next_to_a_live_writer_never_see_a_false_mismatch(tmp_path: Path) -> None:
    """The writer rewrites the last stats chunk at every commit; the reader checks only the rows of full row-table
    chunks against its record (those never change) and computes the filling chunk's row itself: no false mismatch,
    and every filter equals numpy over the committed rows."""
    import threading
    import time

    path = tmp_path / "live.zarr"
    w = actstore.create(path, chunk_rows=4, block_rows=2, commit_interval_s=0)
    append(w, 0, 3)
    w.flush()
    done, errors = threading.Event(), []

    def write() -> None:
        try:
            for lo in range(3, 600, 3):  # 200 commits, each rewriting the last stats chunk
                append(w, lo, lo + 3)
            w.close()
        finally:
            done.set()

    t = threading.Thread(target=write)
    t.start()
    reads = 0
    with actstore.open(path) as store:
        while not done.is_set() or reads < 3:
            try:
                store.refresh()
                sel = store.select(0, "decision", step=[1])
                n = len(store[0, "decision"])
                assert np.array_equal(sel.row_index, np.flatnonzero(np.arange(n) % 4 == 1))
                reads += 1
                time.sleep(0.002)  # leave the writer the GIL between reads (the test needs commits racing reads, not a spin)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)
                break
    t.join()
    assert not errors, errors[0]
