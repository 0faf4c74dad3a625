"""Backends: detection, zarr documents that other tools read, lock, HDF5 parity."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from conftest import write_store

import actstore
from actstore.format._format import FORMAT_VERSION
from actstore.storage._backend import detect_backend


def test_detect_backend() -> None:
    assert detect_backend("run.h5") == "hdf5" and detect_backend("RUN.HDF5") == "hdf5"
    assert detect_backend("run.zarr") == "zarr" and detect_backend("s3://b/run") == "zarr"


def test_zarr_documents(tmp_path: Path) -> None:
    write_store(tmp_path / "s.zarr", n_samples=3)
    root = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())
    assert root["node_type"] == "group" and root["attributes"]["actstore"]["format_version"] == FORMAT_VERSION
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
    """A second writer is refused while the first is open; after close() the lock file is gone (no zero-byte
    ``.actstore.lock`` / ``x.h5.lock`` left) and the store can be written again."""
    for name, lock in (("a.zarr", "a.zarr/.actstore.lock"), ("a.h5", "a.h5.lock")):
        w = actstore.create(tmp_path / name)
        assert (tmp_path / lock).exists()
        with pytest.raises(actstore.StoreLockedError):
            actstore.create(tmp_path / name, resume=True)
        w.close()
        assert not (tmp_path / lock).exists()
        actstore.create(tmp_path / name, resume=True).close()
        assert not (tmp_path / lock).exists()


# ------------------------------------------------------------------------------------------- writer races

_RACE_ROWS = 24


def _racer(k: int, path: Path, kw: dict[str, Any], start: Any, tried: Any, out: int) -> None:
    """A forked writer: released with the others at one instant, it tries to open ``path`` for writing; all wait
    until every one has tried (so a winner is still open while the others try), then a winner writes rows that
    name it (sample ids ``1000 k + i``, activations all ``k``) and closes."""
    result = "?"
    try:
        start.wait(20)
        try:
            w = actstore.create(path, chunk_rows=16, block_rows=4, **kw)
            result = "won"
        except actstore.StoreLockedError:
            w, result = None, "locked"
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            w, result = None, f"{type(exc).__name__}: {exc}"
        tried.wait(20)
        if w is not None:
            for half in range(2):
                n = _RACE_ROWS // 2
                ids = 1000 * k + half * n + np.arange(n)
                w.append("r", rows={"sample": ids, "step": np.zeros(n, int), "position": np.zeros(n, int)},
                         acts={0: np.full((n, 4), k, dtype=np.float32)})
                w.commit()
            w.close()
    except BaseException as exc:  # noqa: BLE001
        result = f"{result} then {type(exc).__name__}: {exc}"
    finally:
        os.write(out, f"{k} {result}\n".encode())
        os._exit(0)


def _race(tmp_path: Path, trials: int, n_writers: int, name: str, **kw: Any) -> None:
    ctx = multiprocessing.get_context("fork")
    for t in range(trials):
        path = tmp_path / f"{t}{name}"
        start, tried = ctx.Barrier(n_writers), ctx.Barrier(n_writers)
        r, w = os.pipe()
        pids = []
        for k in range(n_writers):
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _racer(k, path, kw, start, tried, w)
            pids.append(pid)
        os.close(w)
        for pid in pids:
            os.waitpid(pid, 0)
        with os.fdopen(r) as f:
            results = dict(line.split(" ", 1) for line in f.read().splitlines())
        assert sorted(results.values()) == ["locked"] * (n_writers - 1) + ["won"], (t, results)
        winner = int(next(k for k, v in results.items() if v == "won"))
        with actstore.ActStore.open(path) as store:
            rows = store.rows("r")
            np.testing.assert_array_equal(rows["sample"], 1000 * winner + np.arange(_RACE_ROWS))
            np.testing.assert_array_equal(store[0, "r"][:].numpy(), np.full((_RACE_ROWS, 4), winner, np.float32))
        assert not (path / ".actstore.lock").exists() and not Path(f"{path}.lock").exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("trials", "n_writers", "name", "kw"), [
    (80, 2, ".zarr", {}),
    (40, 3, ".zarr", {"resume": True}),
    (40, 2, ".zarr", {"overwrite": True}),
    (40, 2, ".h5", {}),
])
def test_writers_racing_on_a_new_path_exactly_one_wins(
    tmp_path: Path, trials: int, n_writers: int, name: str, kw: dict[str, Any]
) -> None:
    """Writers forked at one instant on a new path: exactly one gets a writer, every other a StoreLockedError,
    and the store holds exactly the winner's rows; no lock file is left after close."""
    _race(tmp_path, trials, n_writers, name, **kw)
