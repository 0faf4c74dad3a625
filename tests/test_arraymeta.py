"""Each array's zarr.json is checked field by field against the metadata record (and a resume refuses a mismatch)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import write_store

import actstore
from actstore import ActStore, CorruptStoreError
from actstore.format._arraymeta import check_array_doc, check_zarr_array_docs

KEY = "acts/decision/6"


def _edit(doc_path: Path, mutate: Any) -> None:
    doc = json.loads(doc_path.read_text())
    mutate(doc)
    doc_path.write_text(json.dumps(doc))


def test_a_fresh_store_agrees(tmp_path: Path) -> None:
    write_store(tmp_path / "s.zarr", n_samples=3)
    with ActStore.open(tmp_path / "s.zarr") as store:
        assert check_zarr_array_docs(tmp_path / "s.zarr", store.record) == []


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(data_type="int16"), "data_type"),
        (lambda d: d["shape"].__setitem__(1, 33), "shape[1]"),
        (lambda d: d["shape"].__setitem__(0, 1), "shape[0]"),
        (lambda d: d["chunk_grid"]["configuration"].update(chunk_shape=[32, 32]), "chunk_grid.configuration.chunk_shape"),
        (lambda d: d["codecs"][0]["configuration"].update(chunk_shape=[8, 32]), "codecs[0].configuration.chunk_shape"),
        (lambda d: d["codecs"][0]["configuration"]["codecs"][1]["configuration"].update(clevel=5), "clevel"),
        (lambda d: d["codecs"][0]["configuration"]["codecs"][1]["configuration"].update(typesize=4), "typesize"),
        (lambda d: d["codecs"][0]["configuration"]["codecs"].pop(), "codecs[0].configuration.codecs"),
        (lambda d: d["codecs"][0]["configuration"].update(index_location="start"), "index_location"),
        (lambda d: d.update(fill_value=1), "fill_value"),
        (lambda d: d["chunk_key_encoding"]["configuration"].update(separator="."), "separator"),
        (lambda d: d.update(extra=1), "extra"),
    ],
)
def test_each_field_mismatch_is_named(tmp_path: Path, mutate: Any, field: str) -> None:
    path = tmp_path / "s.zarr"
    write_store(path, n_samples=3)
    _edit(path / KEY / "zarr.json", mutate)
    with ActStore.open(path) as store:
        problems = check_zarr_array_docs(path, store.record)
    assert len(problems) == 1 and problems[0][0] == KEY and field in problems[0][1], problems
    with pytest.raises(CorruptStoreError, match=f"{KEY}/zarr.json field.*{re.escape(field[:8])}"):
        actstore.create(path, resume=True)


def test_missing_and_unreadable_docs_are_problems(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    write_store(path, n_samples=3)
    (path / KEY / "zarr.json").unlink()
    (path / "rows/decision/zarr.json").write_bytes(b"{not json")
    with ActStore.open(path) as store:
        got = dict(check_zarr_array_docs(path, store.record))
    assert set(got) == {KEY, "rows/decision"} and "missing" in got[KEY] and "cannot be read" in got["rows/decision"]


def test_check_array_doc_accepts_more_rows_than_committed(tmp_path: Path) -> None:
    """A writer killed between growing an array and writing the commit leaves shape[0] above the commit."""
    path = tmp_path / "s.zarr"
    write_store(path, n_samples=3)
    with ActStore.open(path) as store:
        spec, n = next((a, n) for a, n in store.record.arrays() if a.key == KEY)
        doc = json.loads((path / KEY / "zarr.json").read_text())
        doc["shape"][0] = n + 100
        assert check_array_doc(doc, spec, n, store.record.layout) == []
        assert check_array_doc([1], spec, n, store.record.layout)
