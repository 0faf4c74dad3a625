"""Row tables read chunk by chunk: filters checked against numpy, chunks skipped by their statistics (counted
by the index's own read counter), selections and epoch plans of O(chunks) size, no whole table loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import actstore
from actstore.read._rowindex import RowIndex

N, CR = 6000, 128


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> actstore.ActStore:
    """Samples of 60 rows in capture order (10 steps x 6 positions), episode = sample // 5, task = sample % 3."""
    path = tmp_path_factory.mktemp("ri") / "s.zarr"
    r = np.arange(N)
    sample = r // 60
    with actstore.create(path, chunk_rows=CR, block_rows=32) as w:
        for lo in range(0, N, 1000):
            sl = slice(lo, min(N, lo + 1000))
            w.append("decision", rows={"sample": sample[sl], "step": (r[sl] // 6) % 10, "position": r[sl] % 6,
                                       "episode": sample[sl] // 5, "task": sample[sl] % 3},
                     acts={0: torch.from_numpy(np.repeat(r[sl, None], 4, axis=1).astype(np.float32))})
    return actstore.open(path)


def table_of(store: actstore.ActStore) -> dict[str, np.ndarray]:
    return actstore.open(store.path).rows("decision")  # a fresh store: its counters stay untouched


def could_match(table: dict[str, np.ndarray], column: str, values: list[int]) -> np.ndarray:
    """Chunks whose min..max of ``column`` holds one of ``values``, from the full numpy table."""
    col = table[column]
    lo = np.array([col[i : i + CR].min() for i in range(0, N, CR)])
    hi = np.array([col[i : i + CR].max() for i in range(0, N, CR)])
    return np.any([(lo <= v) & (v <= hi) for v in values], axis=0)


def test_select_reads_only_chunks_that_can_match(store: actstore.ActStore) -> None:
    table = table_of(store)
    for column, values in (("sample", [7, 8, 60]), ("episode", [3]), ("task", [1])):
        kw = {column: values} if column == "sample" else {"match": {column: values}}
        s = actstore.open(store.path)
        view = s.select(0, "decision", **kw)
        index = s.index("decision")
        want = np.flatnonzero(np.isin(table[column], values))
        assert np.array_equal(view.row_index, want)
        assert torch.equal(view[:][:, 0].long(), torch.from_numpy(want))
        could = could_match(table, column, values)
        last_partial = N % CR != 0  # its statistics are computed from the chunk itself (it may still be filling)
        assert index.chunks_read == int(could.sum()) + int(last_partial and not could[-1])
        assert index.full_reads == 0


def test_step_filter_and_where_match_numpy(store: actstore.ActStore) -> None:
    table = table_of(store)
    s = actstore.open(store.path)
    got = s.select(0, "decision", step=3, where=lambda r: r["position"] < 2, match={"task": [0, 2]})
    want = np.flatnonzero((table["step"] == 3) & (table["position"] < 2) & np.isin(table["task"], [0, 2]))
    assert np.array_equal(got.row_index, want)
    assert np.array_equal(got.rows()["sample"], table["sample"][want])
    mask = table["sample"] % 2 == 0
    assert np.array_equal(s.select(0, "decision", where=mask).row_index, np.flatnonzero(mask))
    assert s.index("decision").full_reads == 0
    with pytest.raises(actstore.UnknownKeyError, match="no episode 999"):
        s.select(0, "decision", match={"episode": 999})
    with pytest.raises(actstore.UnknownKeyError, match="columns are"):
        s.select(0, "decision", match={"epsiode": 1})


def test_computed_stats_equal_stored_ones(store: actstore.ActStore) -> None:
    """A store without stored statistics (written before them) gets the same ones, computed chunk by chunk."""
    s = actstore.open(store.path)
    stored = s.index("decision")
    computed = RowIndex(stored.reader, stored.columns, "decision", str(s.path), None)
    assert np.array_equal(computed.stats(), stored.stats())
    assert computed.chunks_read == stored.n_chunks
    a = computed.select({"step": np.array([4])}).row_ids()
    assert np.array_equal(a, stored.select({"step": np.array([4])}).row_ids())


def test_unfiltered_epoch_reads_no_row_table_and_plans_by_chunk(store: actstore.ActStore) -> None:
    s = actstore.open(store.path)
    loader = s.loader(0, "decision", batch_size=100, shuffle_chunks=4)
    plan = loader.plan()
    assert plan.nbytes <= 64 * s.index("decision").n_chunks + 256  # per chunk, not per row
    got = np.concatenate([b[:, 0].long().numpy() for b in loader])
    assert np.array_equal(np.sort(got), np.arange(N))
    index = s.index("decision")
    assert index.chunks_read == 0 and index.full_reads == 0
    # with_rows decodes the row table buffer by buffer, with the activations
    for acts, rows in s.loader(0, "decision", batch_size=256, with_rows=True, seed=3):
        assert torch.equal(rows["sample"], acts[:, 0].long() // 60)
    assert index.full_reads == 0


def test_filtered_loader_plans_by_chunk(store: actstore.ActStore) -> None:
    s = actstore.open(store.path)
    loader = s.loader(0, "decision", step=[2, 5], batch_size=64, world_size=2, rank=1)
    plan = loader.plan()
    assert plan.selection.masks.size <= CR // 8 * s.index("decision").n_chunks  # 1 bit per row of its chunks
    both = [s.loader(0, "decision", step=[2, 5], batch_size=64, world_size=2, rank=r) for r in range(2)]
    seen = [np.concatenate([b[:, 0].long().numpy() for b in ld]) for ld in both]
    table = table_of(store)
    want = np.flatnonzero(np.isin(table["step"], [2, 5]))
    assert np.array_equal(np.sort(np.concatenate(seen)), want)  # disjoint ranks, every row once (even count)
    assert s.index("decision").full_reads == 0


def test_balanced_buffers_hold_as_many_chunks(tmp_path: Path) -> None:
    """10 chunks, buffers of up to 8: two buffers of 5 chunks, not 8 + 2 leftovers."""
    path = tmp_path / "b.zarr"
    with actstore.create(path, chunk_rows=64, block_rows=16) as w:
        r = np.arange(640)
        w.append("decision", rows={"sample": r // 10, "step": r % 2, "position": r % 5}, acts={0: torch.zeros(640, 2)})
    plan = actstore.open(path).loader(0, "decision", batch_size=64, shuffle_chunks=8).plan()
    assert plan.n_buffers == 2 and list(plan.batch_counts()) == [5, 5]
    assert all(np.unique(plan.buffer(i) // 64).size == 5 for i in range(2))


def test_where_that_is_not_row_by_row_is_refused(store: actstore.ActStore) -> None:
    """An aggregate predicate would be answered per chunk, silently unlike over the whole table: refused."""
    layer = store.layers[0]
    with pytest.raises(actstore.ConfigError, match="row's own values"):
        store.select(layer, "decision", where=lambda r: r["sample"] == r["sample"].max())
    with pytest.raises(actstore.ConfigError, match="row's own values"):
        store.select(layer, "decision", where=lambda r: np.arange(r["sample"].size) < 3)
    ok = store.select(layer, "decision", where=lambda r: r["position"] % 2 == 0)  # row by row: fine
    assert len(ok) == int(np.sum(store.rows("decision")["position"] % 2 == 0))


def test_building_a_selection_holds_no_per_row_offsets(store: actstore.ActStore) -> None:
    """Each chunk is packed into bits as it is scanned: the selection's construction never holds an int64 per
    selected row (before: 8 bytes per selected row until every chunk was scanned; 7-8 GB at 1e9 rows)."""
    import tracemalloc

    index = actstore.open(store.path).index("decision")
    index.CACHE = index.n_chunks + 1  # every row-table chunk stays decoded: only select's own work is measured
    index.select({"position": [0]})  # warms the chunk cache and the per-chunk statistics
    tracemalloc.start()
    try:
        sel = index.select({"position": np.arange(5)})  # 5 of 6 positions: most rows of every chunk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    want = np.flatnonzero(np.isin(table_of(store)["position"], np.arange(5)))
    assert np.array_equal(sel.row_ids(), want)
    # before: at least 8 bytes per selected row (40 kB here) on top of the ~15 kB of per-call work measured now
    assert peak < 5 * want.size, (peak, want.size)
