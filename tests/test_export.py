"""Exports: backend conversion is bit-exact both ways; npy and safetensors hold exactly the selected rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_store
from safetensors import safe_open

import actstore
from actstore.tools._export import export, load_npy


def _assert_same_store(a_path: Path, b_path: Path) -> None:
    with actstore.ActStore.open(a_path) as a, actstore.ActStore.open(b_path) as b:
        for key in ("attrs", "roles", "conds", "samples"):
            assert a.meta[key] == b.meta[key], key
        same = {k: v for k, v in a.meta["layout"].items() if k != "blocksums"}  # Zarr keeps block sums, HDF5 not
        assert same == {k: v for k, v in b.meta["layout"].items() if k != "blocksums"}
        ca, cb = a.commit, b.commit
        for key in ("roles", "conds", "samples", "progress"):
            assert ca[key] == cb[key], key
        for role in a.roles:
            for layer in a.layers_of(role):
                assert np.array_equal(a[layer, role].numpy(), b[layer, role].numpy())  # storage bits
            for col, values in a.rows(role).items():
                assert np.array_equal(values, b.rows(role)[col])
        for name in a.conds:
            assert torch.equal(a.cond(name).view(torch.uint8), b.cond(name).view(torch.uint8))
            for col, values in a.cond_rows(name).items():
                assert np.array_equal(values, b.cond_rows(name)[col])
        sa, sb = a.samples(), b.samples()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert np.array_equal(np.asarray(sa[key]), np.asarray(sb[key])), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_zarr_h5_zarr_is_bit_exact(tmp_path: Path, dtype: torch.dtype) -> None:
    write_store(tmp_path / "a.zarr", dtype=dtype, codec="zstd", chunk_rows=32, block_rows=8)
    export(tmp_path / "a.zarr", "h5", tmp_path / "b.h5")
    _assert_same_store(tmp_path / "a.zarr", tmp_path / "b.h5")
    export(tmp_path / "b.h5", "zarr", tmp_path / "c.zarr")
    _assert_same_store(tmp_path / "a.zarr", tmp_path / "c.zarr")
    with actstore.ActStore.open(tmp_path / "c.zarr") as c:
        assert c.meta["layout"] == {"codec": "zstd", "chunk_rows": 32, "block_rows": 8, "blocksums": "crc32c"}


def test_conversion_keeps_commit_progress_and_refuses_overwrite(tmp_path: Path) -> None:
    with actstore.create(tmp_path / "p.zarr", autocommit=False, chunk_rows=16, block_rows=8) as w:
        w.append("decision", rows={"sample": np.zeros(40, int), "step": np.arange(40) % 4, "position": np.arange(40)},
                 acts={14: torch.randn(40, 8).bfloat16()})
        w.commit({"batches": 3})
    export(tmp_path / "p.zarr", "h5", tmp_path / "p.h5")
    with actstore.ActStore.open(tmp_path / "p.h5") as s:
        assert s.commit["progress"] == {"batches": 3}
    _assert_same_store(tmp_path / "p.zarr", tmp_path / "p.h5")
    with pytest.raises(actstore.StoreExistsError):
        export(tmp_path / "p.zarr", "h5", tmp_path / "p.h5")
    export(tmp_path / "p.zarr", "h5", tmp_path / "p.h5", overwrite=True)


def test_safetensors_selection(tmp_path: Path, store_path: Path) -> None:
    truth = write_store(store_path)
    out = export(store_path, "safetensors", tmp_path / "x.safetensors", layer=[10], role=["decision"], step=[0, 3])
    keep = np.isin(truth.rows["decision"]["step"], [0, 3])
    with safe_open(out, "pt") as f:
        keys = set(f.keys())
        assert {"acts.decision.10", "rows.decision.sample", "rows.decision.step", "rows.decision.position",
                "cond.adarms", "cond.adarms.sample", "cond.adarms.step"} == keys
        acts = f.get_tensor("acts.decision.10")
        assert acts.dtype == torch.bfloat16
        assert torch.equal(acts.view(torch.int16), truth.acts[("decision", 10)][torch.from_numpy(keep)].view(torch.int16))
        for col in ("sample", "step", "position"):
            assert np.array_equal(f.get_tensor(f"rows.decision.{col}").numpy(), truth.rows["decision"][col][keep])
        assert torch.equal(f.get_tensor("cond.adarms"), truth.cond)
        meta = f.metadata()
    assert json.loads(meta["filter"]) == {"layer": [10], "role": ["decision"], "step": [0, 3]}
    assert json.loads(meta["actstore"])["format_version"] == actstore.FORMAT_VERSION


def test_npy_directory(tmp_path: Path) -> None:
    truth = write_store(tmp_path / "run.zarr")
    out = export(tmp_path / "run.zarr", "npy", tmp_path / "npy")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["decision.6.npy"] == {"kind": "acts", "role": "decision", "layer": 6,
                                                   "dtype": "bfloat16", "stored_as": "uint16"}
    raw = np.load(out / "decision.6.npy")
    assert raw.dtype == np.uint16  # bf16 bits
    assert torch.equal(load_npy(out, "decision.6.npy").view(torch.int16), truth.acts[("decision", 6)].view(torch.int16))
    rows = np.load(out / "instruction.rows.npy")
    assert manifest["files"]["instruction.rows.npy"]["columns"] == ["sample", "step", "position"]
    assert np.array_equal(rows[:, 2], truth.rows["instruction"]["position"])
    assert torch.equal(load_npy(out, "instruction.10.npy"), truth.acts[("instruction", 10)])


def test_selection_errors(tmp_path: Path) -> None:
    write_store(tmp_path / "run.zarr")
    with pytest.raises(actstore.UnknownKeyError, match="roles are"):
        export(tmp_path / "run.zarr", "npy", tmp_path / "a", role=["nope"])
    with pytest.raises(actstore.UnknownKeyError, match="no layer 7"):
        export(tmp_path / "run.zarr", "npy", tmp_path / "b", layer=[7])
    with pytest.raises(actstore.UnknownKeyError, match="no step"):
        export(tmp_path / "run.zarr", "npy", tmp_path / "c", role=["instruction"], step=[1])
    with pytest.raises(actstore.ConfigError, match="formats are"):
        export(tmp_path / "run.zarr", "csv", tmp_path / "d")
    with pytest.raises(actstore.ConfigError, match="whole store"):
        export(tmp_path / "run.zarr", "h5", tmp_path / "e.h5", step=[1])


def test_reencode_to_codec_none_is_bit_exact(tmp_path) -> None:
    from conftest import write_store

    import actstore
    from actstore.tools._export import convert

    src = tmp_path / "a.zarr"
    truth = write_store(src, n_samples=6)
    out = convert(src, tmp_path / "b.zarr", codec="none")
    with actstore.ActStore.open(out) as store:
        assert store.meta["layout"]["codec"] == "none"
        for (role, layer), ref in truth.acts.items():
            assert torch.equal(store[layer, role][:].view(torch.uint16), ref.view(torch.uint16))
        assert store.samples()["prompt"] == truth.samples["prompt"]
    with pytest.raises(ValueError, match="onto itself"):
        convert(src, src, overwrite=True)
    assert actstore.ActStore.open(src).num_samples == 6  # the source is untouched
