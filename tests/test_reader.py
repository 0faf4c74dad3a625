"""ActStore: catalog, views, tables, conditioning alignment, samples — over both backends, numpy as reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Truth, write_store

import actstore
from actstore import ActStore, UnknownKeyError


def test_roundtrip_all_arrays(written: Truth) -> None:
    store = ActStore.open(written.path)
    assert store.layers == [6, 10]
    assert store.roles == ["instruction", "decision"]
    assert store.steps == [0, 1, 2, 3]
    assert store.format_version == actstore.FORMAT_VERSION
    assert store.attrs == {"model": {"name": "test"}}
    for (role, layer), ref in written.acts.items():
        v = store[layer, role]
        assert v.shape == tuple(ref.shape) and v.dtype == torch.bfloat16 and len(v) == ref.shape[0]
        got = v[:]
        assert got.dtype == torch.bfloat16
        assert torch.equal(got.view(torch.uint16), ref.view(torch.uint16))  # bit-exact
    for role, table in written.rows.items():
        got = store.rows(role)
        assert list(got) == ["sample", "step", "position"]
        for col, ref in table.items():
            np.testing.assert_array_equal(got[col], ref)


def test_step_views_and_select(written: Truth) -> None:
    store = ActStore.open(written.path)
    ref = written.acts[("decision", 10)]
    steps = written.rows["decision"]["step"]
    samples = written.rows["decision"]["sample"]
    v3 = store[10, "decision", 3]
    assert torch.equal(v3[:], ref[torch.from_numpy(steps == 3)])
    sel = store.select(10, "decision", step=[0, 3], sample=range(8))
    mask = np.isin(steps, [0, 3]) & (samples < 8)
    assert torch.equal(sel[:], ref[torch.from_numpy(mask)])
    np.testing.assert_array_equal(sel.rows()["sample"], samples[mask])
    pos = store.select(10, "decision", where=lambda r: r["position"] == 2)
    assert torch.equal(pos[:], ref[torch.from_numpy(written.rows["decision"]["position"] == 2)])


def test_cond_aligned_row_for_row(written: Truth) -> None:
    store = ActStore.open(written.path)
    cond = store.cond("adarms", role="decision")
    rows = written.rows["decision"]
    key = {(int(s), int(t)): i for i, (s, t) in enumerate(zip(written.cond_rows["sample"], written.cond_rows["step"], strict=True))}
    expect = written.cond[[key[(int(s), int(t))] for s, t in zip(rows["sample"], rows["step"], strict=True)]]
    assert cond.shape == (len(rows["sample"]), expect.shape[1])
    assert torch.equal(cond, expect)
    sub = store[10, "decision", 2]
    assert torch.equal(store.cond("adarms", role="decision", rows=sub.row_index), expect[torch.from_numpy(rows["step"] == 2)])
    with pytest.raises(UnknownKeyError, match="no 'adarms' conditioning"):
        store.cond("adarms", role="instruction")


def test_samples_and_instructions(written: Truth) -> None:
    store = ActStore.open(written.path)
    table = store.samples()
    np.testing.assert_array_equal(table["sample"], written.samples["sample"])
    np.testing.assert_array_equal(table["episode"], written.samples["episode"])
    assert table["prompt"] == written.samples["prompt"]
    for s in (0, 7, 23):
        mask = store.instruction_mask(s)
        np.testing.assert_array_equal(mask, written.samples["instruction_mask"][s])
        assert store.prompt(s) == f"task {s} é"
        got = store.instructions(6, s)
        rows = written.rows["instruction"]
        sel = np.nonzero(rows["sample"] == s)[0]
        assert got.shape[0] == int(mask.sum())
        assert torch.equal(got, written.acts[("instruction", 6)][sel])


def test_unknown_keys_list_what_exists(written: Truth) -> None:
    store = ActStore.open(written.path)
    with pytest.raises(KeyError, match=r"no layer 15 .* layers are \[6, 10\]"):
        store[15, "decision"]
    with pytest.raises(UnknownKeyError, match=r"roles are \['instruction', 'decision'\]"):
        store[6, "nope"]
    with pytest.raises(UnknownKeyError, match=r"steps are \[0, 1, 2, 3\]"):
        store[6, "decision", 9]
    with pytest.raises(UnknownKeyError, match="no sample 999"):
        store.instruction_mask(999)
    with pytest.raises(UnknownKeyError, match="conds are"):
        store.cond("time")
    with pytest.raises(UnknownKeyError):
        store[6]


def test_select_refuses_what_indexing_refuses(written: Truth) -> None:
    """``select`` agrees with ``store[layer, role, step]``: a step (or sample) with no rows raises, never an empty
    view; a typo in a ``where`` predicate names the columns."""
    store = ActStore.open(written.path)
    with pytest.raises(UnknownKeyError, match=r"no step 42 .* steps are \[0, 1, 2, 3\]"):
        store.select(6, "decision", step=[42])
    with pytest.raises(UnknownKeyError, match=r"no step 42"):
        store[6, "decision", 42]
    with pytest.raises(UnknownKeyError, match=r"no step 42"):
        store.select(6, "decision", step=[0, 42])
    with pytest.raises(UnknownKeyError, match="no sample 999"):
        store.select(6, "decision", sample=999)
    with pytest.raises(UnknownKeyError, match=r"no step 0 .*steps are \[\]"):
        store.select(6, "instruction", step=0)  # instruction rows carry NO_STEP only
    with pytest.raises(actstore.StoreIndexError, match="list of ints"):
        store.select(6, "decision", step=[1.5])
    with pytest.raises(KeyError, match=r"no column 'postion' .* columns are \['sample', 'step', 'position'\]"):
        store.select(6, "decision", where=lambda r: r["postion"] < 2)
    with pytest.raises(UnknownKeyError, match="no column 'postion'"):
        store.loader(6, "decision", where=lambda r: r["postion"] < 2)
    assert len(store.select(6, "instruction", step=actstore.NO_STEP)) == len(store[6, "instruction"])


def test_reading_after_close_raises(written: Truth) -> None:
    store = actstore.open(written.path)
    assert isinstance(store, ActStore) and not store.closed
    view = store[6, "decision"]
    view[:2]
    store.close()
    assert store.closed
    for read in (lambda: view[:2], lambda: view.numpy(0), lambda: np.asarray(view), lambda: store[6, "decision"],
                 lambda: store.rows("decision"), lambda: store.samples(), lambda: store.cond("adarms"),
                 lambda: store.select(6, "decision", step=1), lambda: store.loader(6, "decision")):
        with pytest.raises(actstore.StoreClosedError, match="closed"):
            read()
    with pytest.raises(ValueError):  # a StoreClosedError is a ValueError, as for a closed file
        view[0]
    store.close()  # twice is harmless


def test_open_errors(tmp_path) -> None:
    with pytest.raises(actstore.NotAStoreError, match="does not exist"):
        ActStore.open(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="no zarr.json"):
        ActStore.open(tmp_path / "plain")
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(actstore.NotAStoreError, match="not an HDF5 file"):
        ActStore.open(tmp_path / "x.h5")


def test_refresh_sees_new_commits(store_path) -> None:
    with actstore.create(store_path, chunk_rows=32, block_rows=8, commit_interval_s=0) as w:
        a = torch.randn(50, 8)
        w.append("r", rows={"sample": np.zeros(50, int), "step": np.zeros(50, int), "position": np.arange(50)}, acts={0: a})
        w.flush()
        store = ActStore.open(store_path) if store_path.suffix != ".h5" else None
        if store is not None:
            assert len(store[0, "r"]) == 50
        w.append("r", rows={"sample": np.ones(30, int), "step": np.zeros(30, int), "position": np.arange(30)}, acts={0: a[:30]})
        w.flush()
        if store is not None:
            assert len(store[0, "r"]) == 50
            assert len(store.refresh()[0, "r"]) == 80
            assert torch.equal(store[0, "r"][50:], a[:30])


def test_float32_and_float16_preserved(tmp_path) -> None:
    for dtype in (torch.float32, torch.float16):
        p = tmp_path / f"{dtype}.zarr"
        truth = write_store(p, n_samples=6, dtype=dtype, layers=(1,))
        v = ActStore.open(p)[1, "decision"]
        assert v.dtype == dtype
        assert torch.equal(v[:], truth.acts[("decision", 1)])


def test_repr_mentions_rows(written: Truth) -> None:
    text = repr(ActStore.open(written.path))
    assert "decision" in text and "samples=24" in text
