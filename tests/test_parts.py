"""Multi-process stores: N writers (processes) write disjoint parts; readers see one store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import actstore
from actstore import ActStore, SchemaMismatchError
from actstore._parts import parse_part

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
    assert ActStore.open(tmp_path / "a.zarr").roles == []


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
