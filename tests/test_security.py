"""Names that could escape the store are refused on write and on open; opening and reading never unpickles or
evaluates anything from the store."""

from __future__ import annotations

import builtins
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write_store
from test_crash import read_all

import actstore
from actstore import ActStore, CorruptStoreError, InvalidNameError
from actstore.format._format import seal_metadata
from actstore.tools._verify import verify

BAD_NAMES = ["..", "../x", "../../etc/passwd", "/abs", "/", "a/b", "a\\..", "a\0b", "x\x1b[31m", "new\nline", ".hidden",
             "", "a" * 129]


def _rows(n: int) -> dict[str, np.ndarray]:
    return {"sample": np.arange(n), "step": np.zeros(n, int), "position": np.zeros(n, int)}


WRITES = {
    "role": lambda w, name: w.append(name, rows=_rows(2), acts={0: torch.zeros(2, 3)}),
    "layer": lambda w, name: w.append("r", rows=_rows(2), acts={name: torch.zeros(2, 3)}),
    "cond": lambda w, name: w.append_cond(name, rows={"sample": np.arange(2), "step": np.zeros(2, int)}, acts=torch.zeros(2, 3)),
    "column": lambda w, name: w.append("r", rows={**_rows(2), name: np.arange(2)}, acts={0: torch.zeros(2, 3)}),
    "sample column": lambda w, name: w.append_samples(np.arange(2), **{name: np.arange(2)}),
}


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("what", list(WRITES))
def test_escaping_names_refused_on_write(tmp_path: Path, what: str, name: str) -> None:
    path = tmp_path / "s" / "run.zarr"
    with actstore.create(path) as w:
        with pytest.raises(InvalidNameError, match="cannot be used|must be") as info:
            WRITES[what](w, name)
        assert repr(name)[1:-1][:20] in str(info.value) or name == ""
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert all(str(p).startswith("s") for p in before)  # nothing outside the store's parent
    store = ActStore.open(path)
    assert store.roles == [] and store.conds == [] and store.num_samples == 0


@pytest.mark.parametrize(
    "where",
    [
        lambda m, bad: m["roles"].update({bad: m["roles"].pop("decision")}),
        lambda m, bad: m["roles"]["decision"]["layers"][0].update(layer=bad),
        lambda m, bad: m["conds"].update({bad: m["conds"].pop("adarms")}),
        lambda m, bad: m["roles"]["decision"]["columns"].append(bad),
        lambda m, bad: m["samples"]["columns"].append(bad),
    ],
    ids=["role", "layer", "cond", "column", "sample-column"],
)
@pytest.mark.parametrize("bad", ["../../outside", "/etc", "a\0b", "x\x07"])
def test_escaping_names_in_metadata_refused_on_open(tmp_path: Path, where: Any, bad: str) -> None:
    path = tmp_path / "run.zarr"
    write_store(path, n_samples=3, steps=1)
    doc = json.loads((path / "zarr.json").read_text())
    meta = doc["attributes"]["actstore"]
    where(meta, bad)
    meta["commit"]["roles"] = {r: n for r, n in meta["commit"]["roles"].items() if r in meta["roles"]}
    meta["commit"]["conds"] = {c: n for c, n in meta["commit"]["conds"].items() if c in meta["conds"]}
    doc["attributes"]["actstore"] = seal_metadata(meta)  # a forger recomputes the checksum: the names still fail
    (path / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(CorruptStoreError, match="cannot be used"):
        ActStore.open(path)
    with pytest.raises(CorruptStoreError):
        actstore.create(path, resume=True)


class _Boom:
    """Unpickling this runs ``builtins.exec``; the test fails if anything ever does."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.exec, ("raise SystemExit('unpickled!')",))


def _forbid(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("actstore tried to unpickle / evaluate stored bytes")

    import numpy.ma  # noqa: F401 - numpy imports it lazily; get that done before the traps are set

    for mod, name in [(pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load"), (np, "load"),
                      (builtins, "eval")]:
        monkeypatch.setattr(mod, name, refuse)


def test_open_and_read_never_unpickle(tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store whose attributes and stray chunk-named files hold pickle payloads opens and reads normally with
    pickle, torch.load, np.load and eval booby-trapped; a chunk replaced by a pickle is
    CorruptStoreError."""
    payload = pickle.dumps(_Boom())
    path = tmp_path / ("run.zarr" if backend == "zarr" else "run.h5")
    truth = write_store(path, n_samples=6, steps=2)
    if backend == "zarr":
        doc = json.loads((path / "zarr.json").read_text())
        doc["attributes"]["actstore"]["attrs"]["payload"] = payload.decode("latin-1")
        doc["attributes"]["pickle"] = payload.decode("latin-1")
        doc["attributes"]["actstore"] = seal_metadata(doc["attributes"]["actstore"])
        (path / "zarr.json").write_text(json.dumps(doc))
        stray = path / "acts" / "decision" / "6" / "c" / "99" / "0"
        stray.parent.mkdir(parents=True)
        stray.write_bytes(payload)
        (path / "acts" / "decision" / "6" / "attrs.pkl").write_bytes(payload)
    else:
        import h5py

        with h5py.File(path, "a") as f:
            f.attrs["pickle"] = np.void(payload)
            f["acts/decision/6"].attrs["pickle"] = np.void(payload)
    _forbid(monkeypatch)
    store = ActStore.open(path)
    got = read_all(store)
    assert torch.equal(store[6, "decision"][:], truth.acts[("decision", 6)])
    assert got["prompt"] == truth.samples["prompt"]
    assert verify(path).ok
    if backend == "zarr":
        (path / "acts" / "decision" / "6" / "c" / "0" / "0").write_bytes(payload)
        with pytest.raises(CorruptStoreError, match=r"chunk 0 of acts/decision/6"):
            ActStore.open(path)[6, "decision"][:]
