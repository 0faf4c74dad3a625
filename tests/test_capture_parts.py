"""Multi-process capture: torchrun with 2 CPU ranks (gloo) writes one store equal to a single-process capture."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _procs import run_group

from actstore import ActStore
from capture._cli import capture_run, resolve_part

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the ranks run with OMP_NUM_THREADS=1: compare alike

ARGS = ["--max-batches", "4", "--batch-size", "2", "--num-steps", "2", "--layers", "6", "--progress-interval", "60"]


def test_resolve_part(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_part(None) is None and resolve_part("1/3") == (1, 3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert resolve_part(None) == (1, 2)


def _by_sample(store: ActStore, role: str) -> dict[int, torch.Tensor]:
    rows = store.rows(role)
    acts = store[6, role][:]
    order = np.lexsort((rows["position"], rows["step"], rows["sample"]))
    out: dict[int, list[torch.Tensor]] = {}
    for i in order:
        out.setdefault(int(rows["sample"][i]), []).append(acts[i])
    return {k: torch.stack(v) for k, v in out.items()}


def test_torchrun_two_ranks_write_one_store(tmp_path: Path) -> None:
    multi = tmp_path / "multi.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "capture", "--output-dir", str(multi), *ARGS]
    done = run_group(cmd, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("activations") == 1  # after a gloo barrier, rank 0 alone prints the whole store
    assert "samples  8" in done.stdout
    single = capture_run(output_dir=str(tmp_path / "single.zarr"), max_batches=4, batch_size=2, num_steps=2,
                         layers=(6,), quiet=True)
    a, b = ActStore.open(multi), ActStore.open(single)
    assert a.meta["parts"] == 2 and len(a.commit["parts"]) == 2
    ids = a.samples()["sample"]
    np.testing.assert_array_equal(ids, [0, 1, 4, 5, 2, 3, 6, 7])  # part 0: batches 0, 2; part 1: batches 1, 3
    for role in ("decision", "instruction"):
        assert len(a[6, role]) == len(b[6, role])
        ra, rb = _by_sample(a, role), _by_sample(b, role)
        assert ra.keys() == rb.keys()
        for s in ra:
            assert torch.equal(ra[s], rb[s]), (role, s)
    # each part resumes on its own: asking for 6 batches adds batch 4 to part 0 and batch 5 to part 1
    for rank in (0, 1):
        capture_run(output_dir=str(multi), max_batches=6, batch_size=2, num_steps=2, layers=(6,), quiet=True,
                    resume=True, part=f"{rank}/2")
    a.refresh()
    assert sorted(a.samples()["sample"].tolist()) == list(range(12))
    assert len(a[6, "decision"]) == len(b[6, "decision"]) * 6 // 4


def test_parts_need_a_shared_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ending in .zarr"):
        capture_run(output_dir=str(tmp_path / "runs"), part="0/2", max_batches=1, quiet=True)
