"""Multi-process stores: N writers (processes) write disjoint parts; readers see one store."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import actstore
from actstore import ActStore, SchemaMismatchError
from actstore.storage import _backend
from actstore.storage._parts import parse_part

_WRITER = """
import sys, numpy as np, torch, actstore
path, i, n, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
g = torch.Generator().manual_seed(i)
with actstore.create(path, part=(i, n), chunk_rows=32, block_rows=8) as w:
    ids = np.arange(i, 4 * n, n)  # globally unique sample ids: i, i+n, ...
    w.append_samples(ids, episode=ids // 2)
    s = np.repeat(ids, rows // 4)
    w.append("decision", rows={"sample": s, "step": np.zeros(rows, int), "position": np.arange(rows)},
             acts={6: torch.randn(rows, 8, generator=g).to(torch.bfloat16)})
"""


def _expected(i: int, rows: int) -> torch.Tensor:
    return torch.randn(rows, 8, generator=torch.Generator().manual_seed(i)).to(torch.bfloat16)


def test_two_processes_write_one_store(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    script = tmp_path / "w.py"
    script.write_text(_WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(path), str(i), "2", str(40 + 20 * i)]) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = ActStore.open(path)
    assert len(store[6, "decision"]) == 100
    assert torch.equal(store[6, "decision"][:], torch.cat([_expected(0, 40), _expected(1, 60)]))
    assert torch.equal(store[6, "decision"][np.array([99, 0, 45])], torch.cat([_expected(0, 40), _expected(1, 60)])[[99, 0, 45]])
    ids = store.samples()["sample"]
    np.testing.assert_array_equal(ids, [0, 2, 4, 6, 1, 3, 5, 7])
    assert len(set(ids.tolist())) == ids.size
    assert store.num_samples == 8 and len(store.commit["parts"]) == 2
    # each part resumes on its own
    with actstore.create(path, part="1/2", resume=True) as w:
        w.append("decision", rows={"sample": np.full(5, 9), "step": np.zeros(5, int), "position": np.arange(5)},
                 acts={6: torch.zeros(5, 8, dtype=torch.bfloat16)})
    store.refresh()
    assert len(store[6, "decision"]) == 105
    assert torch.equal(store[6, "decision"][100:], torch.zeros(5, 8, dtype=torch.bfloat16))


def test_part_validation(tmp_path: Path) -> None:
    assert parse_part("1/4") == (1, 4) and parse_part((0, 1)) == (0, 1)
    for bad in ("4/4", "x", (2, 1), "-1/3"):
        with pytest.raises(SchemaMismatchError):
            parse_part(bad)  # type: ignore[arg-type]
    with actstore.create(tmp_path / "a.zarr", part=(0, 2)):
        pass
    with pytest.raises(SchemaMismatchError, match="a store of 2 parts"):
        actstore.create(tmp_path / "a.zarr", part=(0, 3))
    with pytest.raises(SchemaMismatchError, match="zarr backend"):
        actstore.create(tmp_path / "b.h5", part=(0, 2))
    with pytest.raises(actstore.CorruptStoreError, match="part 1 of 2 .* is missing"):
        ActStore.open(tmp_path / "a.zarr")  # part 1 never written: an error, not half the rows
    with actstore.create(tmp_path / "a.zarr", part=(1, 2)):
        pass
    assert ActStore.open(tmp_path / "a.zarr").roles == []


def test_missing_part_is_an_error_not_fewer_rows(tmp_path: Path) -> None:
    """Deleting a part's zarr.json or its whole directory makes the store unreadable (CorruptStoreError naming the
    part), where it used to read as a store with half the rows."""
    import shutil

    path = tmp_path / "p.zarr"
    for i in range(2):
        with actstore.create(path, part=(i, 2), chunk_rows=16, block_rows=4) as w:
            w.append("r", rows={"sample": 10 * i + np.arange(5), "step": np.zeros(5, int), "position": np.zeros(5, int)},
                     acts={0: np.ones((5, 2), np.float32)})
    assert len(ActStore.open(path)[0, "r"]) == 10
    (path / "parts" / "00001" / "zarr.json").unlink()
    with pytest.raises(actstore.CorruptStoreError, match=r"part 1 of 2 .* no readable zarr.json"):
        ActStore.open(path)
    shutil.rmtree(path / "parts" / "00000")
    with pytest.raises(actstore.CorruptStoreError, match=r"part 0 of 2 .* is missing"):
        ActStore.open(path)


def test_loader_over_parts_reads_every_row_once(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    acts = []
    for i, n in enumerate((50, 75, 30)):
        a = torch.randn(n, 4)
        acts.append(a)
        with actstore.create(path, part=(i, 3), chunk_rows=16, block_rows=4) as w:
            w.append("r", rows={"sample": np.arange(n) + 1000 * i, "step": np.zeros(n, int), "position": np.arange(n)},
                     acts={0: a})
    ref = torch.cat(acts)
    store = ActStore.open(path)
    plain = torch.cat([b.clone() for b in store.loader(0, "r", batch_size=32, shuffle=False)])
    assert torch.equal(plain, ref)
    seen = []
    for batch, rows in store.loader(0, "r", batch_size=20, seed=3, with_rows=True, shuffle_chunks=2):
        seen.append(rows["sample"].clone())
        idx = np.searchsorted(store.rows("r")["sample"], rows["sample"].numpy())
        assert torch.equal(batch, ref[idx])
    assert sorted(torch.cat(seen).tolist()) == sorted(store.rows("r")["sample"].tolist())


def _part_racer(i: int, n: int, path: Path, start: Any, out: int) -> None:
    """A forked part writer released with the others at one instant; writes 12 rows naming it, reports."""
    result = "?"
    try:
        start.wait(20)
        with actstore.create(path, part=(i, n), chunk_rows=16, block_rows=4) as w:
            w.append("r", rows={"sample": 100 * i + np.arange(12), "step": np.zeros(12, int),
                                "position": np.zeros(12, int)}, acts={0: np.full((12, 2), i, np.float32)})
        result = "ok"
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        result = f"{type(exc).__name__}: {exc}"
    finally:
        os.write(out, f"{i} {result}\n".encode())
        os._exit(0)


@pytest.mark.timeout(120)
def test_parts_starting_at_one_instant_all_write(tmp_path: Path) -> None:
    """Parts forked at one instant on a new path: the root is created once under its lock, every part writes,
    the store reads as the parts in order; no lock file is left behind."""
    ctx = multiprocessing.get_context("fork")
    n = 3
    for t in range(25):
        path = tmp_path / f"{t}.zarr"
        start = ctx.Barrier(n)
        r, w = os.pipe()
        pids = []
        for i in range(n):
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _part_racer(i, n, path, start, w)
            pids.append(pid)
        os.close(w)
        for pid in pids:
            os.waitpid(pid, 0)
        with os.fdopen(r) as f:
            results = dict(line.split(" ", 1) for line in f.read().splitlines())
        assert set(results.values()) == {"ok"}, (t, results)
        with ActStore.open(path) as store:
            np.testing.assert_array_equal(store.rows("r")["sample"], np.concatenate([100 * i + np.arange(12) for i in range(n)]))
            np.testing.assert_array_equal(store[0, "r"][:].numpy(), np.repeat(np.arange(n, dtype=np.float32), 12)[:, None].repeat(2, 1))
        assert not list(path.rglob(".actstore.lock"))


def test_single_writer_and_parts_exclude_each_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A part writer holds the root's lock shared: overwriting the store as a single store is refused while it is
    open (and deletes nothing); a single-store writer holds it exclusively: a part is refused."""
    monkeypatch.setattr(_backend, "ROOT_WAIT", 0.2)
    path = tmp_path / "p.zarr"
    part = actstore.create(path, part=(0, 2))
    with pytest.raises(actstore.StoreLockedError):
        actstore.create(path, overwrite=True)
    assert (path / "parts" / "00000" / "zarr.json").exists()
    part.close()
    single = actstore.create(tmp_path / "s.zarr")
    with pytest.raises(actstore.StoreLockedError):
        actstore.create(tmp_path / "s.zarr", part=(1, 2))
    single.close()
