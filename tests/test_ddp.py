"""DDP training reads: the loader under torchrun (2 CPU ranks, gloo) gives each rank disjoint rows, equal batch
counts, and together exactly one epoch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from _procs import run_group

import actstore

_SCRIPT = """
import json, sys
import torch.distributed as dist
import actstore

dist.init_process_group("gloo")
rank, store_path, out_dir = dist.get_rank(), sys.argv[1], sys.argv[2]
store = actstore.ActStore.open(store_path)
loader = store.loader(0, "r", batch_size=32, seed=7, with_rows=True, drop_last={drop_last})
seen, batches = [], 0
for acts, rows in loader:
    seen += rows["position"].tolist()  # position = global row id in this store
    batches += 1
    assert acts.shape[0] == len(rows["position"])
    assert (acts[:, 0].to(float) == rows["position"].to(float)).all()  # the acts belong to these rows
json.dump({{"rank": rank, "world": dist.get_world_size(), "rows": seen, "batches": batches}},
          open(f"{{out_dir}}/rank{{rank}}.json", "w"))
dist.barrier()
dist.destroy_process_group()
"""


def _run(tmp_path: Path, n_rows: int, drop_last: bool) -> list[dict]:
    store = tmp_path / "s.zarr"
    acts = torch.zeros(n_rows, 4)
    acts[:, 0] = torch.arange(n_rows, dtype=torch.float32)
    with actstore.create(store, chunk_rows=64, block_rows=16) as w:
        w.append("r", rows={"sample": np.arange(n_rows) // 10, "step": np.zeros(n_rows, int),
                            "position": np.arange(n_rows)}, acts={0: acts})
    script = tmp_path / "ddp.py"
    script.write_text(_SCRIPT.format(drop_last=drop_last))
    out = tmp_path / f"out-{drop_last}"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(store), str(out)]
    done = run_group(cmd, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_ranks_disjoint_equal_one_epoch(tmp_path: Path) -> None:
    n = 1000  # 1000 rows over 2 ranks: 500 each
    r0, r1 = _run(tmp_path, n, drop_last=False)
    assert r0["world"] == r1["world"] == 2
    assert r0["batches"] == r1["batches"]
    assert not set(r0["rows"]) & set(r1["rows"])
    assert sorted(r0["rows"] + r1["rows"]) == list(range(n))


def test_two_ranks_uneven_rows(tmp_path: Path) -> None:
    n = 1001  # odd: without drop_last one row is read twice (as DistributedSampler pads), all rows are read
    r0, r1 = _run(tmp_path, n, drop_last=False)
    assert r0["batches"] == r1["batches"] and len(r0["rows"]) == len(r1["rows"]) == 501
    assert len(set(r0["rows"]) & set(r1["rows"])) == 1 and set(r0["rows"]) | set(r1["rows"]) == set(range(n))


def test_two_ranks_drop_last(tmp_path: Path) -> None:
    n = 1001  # drop_last: 500 rows a rank, each rank's short last batch dropped: 15 batches of 32
    r0, r1 = _run(tmp_path, n, drop_last=True)
    assert r0["batches"] == r1["batches"] == 15
    assert len(r0["rows"]) == len(r1["rows"]) == 480 and not set(r0["rows"]) & set(r1["rows"])
