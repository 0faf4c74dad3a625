"""``actstore.tools._verify.verify``: a full check that reports every problem, each naming the array and the chunk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_store

import actstore
from actstore.tools._verify import Problem, VerifyReport, verify


def test_healthy_store_is_ok(tmp_path: Path, backend: str) -> None:
    path = tmp_path / ("run.zarr" if backend == "zarr" else "run.h5")
    write_store(path, n_samples=7, steps=2)
    report = verify(path)
    arrays = 13 if backend == "hdf5" else 24  # 11 + 2 rowstats, and the block sums of the 11 on Zarr
    assert report.ok and report.problems == () and report.arrays == arrays and report.chunks >= arrays, report.render()
    assert report.rows["samples"] == 7 and report.render()[0].startswith(f"{path}: OK")


def test_every_corrupt_chunk_is_reported(tmp_path: Path) -> None:
    """Two damaged chunks (a flipped bit, a truncation) and a deleted one: all three reported, by array and chunk."""
    path = tmp_path / "run.zarr"
    write_store(path, n_samples=12, steps=2)
    a = path / "acts" / "decision" / "6" / "c" / "1" / "0"
    blob = bytearray(a.read_bytes())
    blob[10] ^= 0x04
    a.write_bytes(bytes(blob))
    b = path / "rows" / "instruction" / "c" / "0" / "0"
    b.write_bytes(b.read_bytes()[:-9])
    (path / "cond" / "adarms" / "acts" / "c" / "0" / "0").unlink()
    report = verify(path)
    where = {(p.array, p.chunk) for p in report.problems}
    assert {("acts/decision/6", 1), ("rows/instruction", 0), ("cond/adarms/acts", 0)} <= where, report.render()
    text = "\n".join(report.render())
    assert "checksum mismatch" in text and "truncated" in text and "missing" in text and "3 problems" in text


def test_disagreeing_tables_are_reported(tmp_path: Path) -> None:
    """Rows whose sample is not stored, and decision rows without their adarms vector."""
    path = tmp_path / "run.zarr"
    with actstore.create(path, chunk_rows=16, block_rows=4) as w:
        w.append_samples(np.arange(2))
        w.append("decision", rows={"sample": np.array([0, 1, 5]), "step": np.array([0, 0, 1]), "position": np.zeros(3, int)},
                 acts={6: torch.zeros(3, 4)})
        w.append_cond("adarms", rows={"sample": np.array([0, 1]), "step": np.array([0, 0])}, acts=torch.zeros(2, 4))
    messages = [str(p) for p in verify(path).problems]
    assert any("rows/decision" in m and "not in the samples table, e.g. [5]" in m for m in messages), messages
    assert any("no 'adarms' conditioning, e.g. [(5, 1)]" in m for m in messages), messages


def test_zarr_doc_shape_and_unreadable_stores(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    write_store(path, n_samples=3, steps=1)
    doc_path = path / "acts" / "decision" / "10" / "zarr.json"
    doc = json.loads(doc_path.read_text())
    doc["shape"][0] = 1
    doc_path.write_text(json.dumps(doc))
    (path / "rows" / ".zarr.json.dead.tmp").write_text("x")
    report = verify(path)
    assert [(p.array, p.chunk) for p in report.problems] == [("acts/decision/10", None)]
    assert "fewer than the" in report.problems[0].message and any("temp files" in n for n in report.notes)
    missing = verify(tmp_path / "nope.zarr")
    assert not missing.ok and missing.problems[0].array is None and "does not exist" in missing.render()[1]


def test_report_is_frozen() -> None:
    report = VerifyReport("x", (Problem("acts/r/0", 3, "bad"),))
    assert not report.ok and str(report.problems[0]) == "acts/r/0 chunk 3: bad"
    with pytest.raises(AttributeError):
        report.path = "y"  # type: ignore[misc]


def test_multi_part_store_verifies_as_one(tmp_path: Path) -> None:
    """A healthy part 0/2 + 1/2 store is OK (each part checked with its own commit record, tables across parts);
    damage in one part is reported under that part; a missing part is a problem, not fewer rows."""
    path = tmp_path / "p.zarr"
    for i in range(2):
        with actstore.create(path, part=(i, 2), chunk_rows=16, block_rows=4) as w:
            ids = 10 * i + np.arange(5)
            w.append_samples(ids, episode=ids)
            w.append("r", rows={"sample": np.repeat(ids, 4), "step": np.zeros(20, int), "position": np.zeros(20, int)},
                     acts={0: torch.randn(20, 8)})
    report = verify(path)
    assert report.ok, report.render()
    assert report.rows["r"] == 40 and report.rows["samples"] == 10
    chunk = path / "parts" / "00001" / "acts" / "r" / "0" / "c" / "0" / "0"
    blob = bytearray(chunk.read_bytes())
    blob[5] ^= 1
    chunk.write_bytes(bytes(blob))
    assert [(p.array, p.chunk) for p in verify(path).problems] == [("parts/00001/acts/r/0", 0)]
    (path / "parts" / "00000" / "zarr.json").unlink()
    report = verify(path)
    assert not report.ok and "part 0 of 2" in str(report.problems[0]), report.render()



def test_row_stats_are_verified(tmp_path: Path) -> None:
    """The per-chunk row statistics (``rowstats/{role}``) are checked like every array: a damaged block of them is
    a verify problem naming the array (before, verify skipped them)."""
    path = tmp_path / "s.zarr"
    write_store(path, n_samples=6)
    report = verify(path)
    assert report.ok
    files = sorted(p for p in (path / "rowstats").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert files, "the writer records per-chunk row statistics"
    data = bytearray(files[0].read_bytes())
    data[len(data) // 3] ^= 0x10
    files[0].write_bytes(bytes(data))
    bad = verify(path)
    assert not bad.ok and any(p.array and p.array.startswith("rowstats/") for p in bad.problems), bad.problems
