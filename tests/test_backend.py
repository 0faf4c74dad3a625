"""Backends: detection, zarr documents that other tools read, lock, HDF5 parity."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import write_store

import actstore
from actstore._backend import detect_backend


def test_detect_backend() -> None:
    assert detect_backend("run.h5") == "hdf5" and detect_backend("RUN.HDF5") == "hdf5"
    assert detect_backend("run.zarr") == "zarr" and detect_backend("s3://b/run") == "zarr"


def test_zarr_documents(tmp_path: Path) -> None:
    write_store(tmp_path / "s.zarr", n_samples=3)
    root = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())
    assert root["node_type"] == "group" and root["attributes"]["actstore"]["format_version"] == 1
    arr = json.loads((tmp_path / "s.zarr" / "acts" / "decision" / "6" / "zarr.json").read_text())
    assert arr["data_type"] == "uint16" and arr["codecs"][0]["name"] == "sharding_indexed"
    assert [c["name"] for c in arr["codecs"][0]["configuration"]["codecs"]] == ["bytes", "blosc", "crc32c"]
    for group in ("acts", "acts/decision", "rows", "cond", "cond/adarms", "samples"):
        assert json.loads((tmp_path / "s.zarr" / group / "zarr.json").read_text())["node_type"] == "group"
    assert not list((tmp_path / "s.zarr").rglob("*.tmp"))  # no temp files left behind


def test_hdf5_is_plain_h5py_readable(tmp_path: Path) -> None:
    truth = write_store(tmp_path / "s.h5", n_samples=3)
    import hdf5plugin  # noqa: F401

    with h5py.File(tmp_path / "s.h5", "r") as f:
        meta = json.loads(f.attrs["actstore"])
        n = meta["commit"]["roles"]["decision"]
        got = f["acts/decision/10"][:n]
    np.testing.assert_array_equal(got, truth.acts[("decision", 10)].view(torch.uint16).numpy())


def test_lock_released_on_close(tmp_path: Path) -> None:
    for name in ("a.zarr", "a.h5"):
        w = actstore.create(tmp_path / name)
        with pytest.raises(actstore.StoreLockedError):
            actstore.create(tmp_path / name, resume=True)
        w.close()
        actstore.create(tmp_path / name, resume=True).close()
