"""Per-chunk row statistics written with each commit: exact after appends and resume, safe after a rollback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import actstore
from actstore._rowstats import chunk_stats


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
    assert first.index("decision").chunks_read == 0  # stored, not recomputed
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
