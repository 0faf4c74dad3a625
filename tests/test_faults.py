"""Resource faults (file size limit during a capture) and the bad inputs not covered by test_writer / test_reader /
test_view / test_format: each gives a clear error naming the value and the choices, and writes nothing half-way."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import _crash_writer as cw
import h5py
import numpy as np
import pytest
import torch
from test_crash import SCRIPT, SEED, assert_store_is_batches, script_env

import actstore
from actstore import (
    ActStore,
    FormatVersionError,
    NotAStoreError,
    SchemaMismatchError,
    StoreIndexError,
    StoreLockedError,
    UnknownKeyError,
)
from actstore.tools._verify import verify


@pytest.mark.timeout(120)
def test_file_size_limit_fails_clearly_and_keeps_commits(tmp_path: Path) -> None:
    """RLIMIT_FSIZE (SIGXFSZ ignored, so writes fail with EFBIG) during a capture: WriterFailedError caused by the
    OSError, exit code 3, and the store opens with its last commit intact; a resume without the limit finishes."""
    path = tmp_path / "run.zarr"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "write", str(path), "--seed", str(SEED), "--batches", "30", "--d", "256",
         "--fsize", "24000"],
        env=script_env(), capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"failed WriterFailedError OSError {errno.EFBIG}" in proc.stdout, proc.stdout
    assert "File too large" in proc.stdout and str(path) in proc.stdout
    k = assert_store_is_batches(path, SEED, d=256)
    assert k < 30
    cw.write(str(path), SEED, k + 2, d=256)  # resume, no limit now
    assert assert_store_is_batches(path, SEED, d=256) == k + 2


# ------------------------------------------------------------------------------------------- bad input


def _rows(n: int, sample0: int = 0, step: int = 0) -> dict[str, np.ndarray]:
    return {"sample": np.arange(sample0, sample0 + n), "step": np.full(n, step), "position": np.zeros(n, int)}


def _crow(n: int) -> dict[str, np.ndarray]:
    return {"sample": np.arange(n), "step": np.zeros(n, int)}


BAD_WRITES = [
    (lambda w: w.append_cond("adarms", rows=_crow(3), acts=torch.zeros(3, 5)), "d=5, but the store holds d=4"),
    (lambda w: w.append_cond("adarms", rows=_crow(3), acts=torch.zeros(3, 4, dtype=torch.float64)), "float64, but the store holds float32"),
    (lambda w: w.append_cond("adarms", rows=_crow(2), acts=torch.zeros(3, 4)), "has 2 rows but the activations have 3"),
    (lambda w: w.append("r", rows={**_rows(3), "sample": np.array([0.5, 1, 2])}, acts={0: torch.zeros(3, 4)}), "must hold integers, got dtype float64"),
    (lambda w: w.append("r", rows={**_rows(3), "step": np.zeros((3, 1), int)}, acts={0: torch.zeros(3, 4)}), "must be 1-D"),
    (lambda w: w.append("r", rows=[1, 2, 3], acts={0: torch.zeros(3, 4)}), "mapping of column name"),
    (lambda w: w.append("r", rows=_rows(3), acts={0: torch.zeros(3, 4), "x": torch.zeros(2, 4)}), "exactly those"),
    (lambda w: w.append("q", rows=_rows(3), acts={0: torch.zeros(3, 4), 1: torch.zeros(2, 4)}), "disagree on the row count"),
    (lambda w: w.append("r", rows=_rows(3), acts={0: np.zeros((3, 4), dtype=object)}), "valid dtypes"),
    (lambda w: w.append_samples(np.arange(9, 11), prompt=["a", "b"], instruction_mask=np.ones((3, 4))), r"shape \(2, L\)"),
    (lambda w: w.append_samples(np.arange(9, 11), prompt=["a", "b"], instruction_mask=np.ones((2, 3), dtype=float)), "integers or bools"),
    (lambda w: w.append_samples(np.arange(9, 11), prompt=["a", "b"], instruction_mask=np.ones((2, 5), bool)), "5 tokens wide but the store holds 3"),
    (lambda w: w.append_samples(np.array([0, 1]), prompt=["a", "b"], instruction_mask=np.ones((2, 3), bool)), "already stored"),
    (lambda w: w.append_samples(np.arange(9, 11), prompt=["a\0b", "c"], instruction_mask=np.ones((2, 3), bool)), "without NUL"),
    (lambda w: w.append_samples(np.arange(9, 11), prompt=["a", "b"]), "has 'instruction_mask'; every append_samples call must pass it"),
]


@pytest.mark.parametrize("call, match", BAD_WRITES)
def test_bad_writes_refused_and_nothing_written(tmp_path: Path, call: Any, match: str) -> None:
    path = tmp_path / "run.zarr"
    a, c = torch.randn(3, 4), torch.randn(3, 4)
    with actstore.create(path) as w:
        w.append("r", rows=_rows(3), acts={0: a})
        w.append_cond("adarms", rows=_crow(3), acts=c)
        w.append_samples(np.arange(3), prompt=["x", "y", "z"], instruction_mask=np.ones((3, 3), bool))
        with pytest.raises(SchemaMismatchError, match=match):
            call(w)
    store = ActStore.open(path)
    assert store.roles == ["r"] and torch.equal(store[0, "r"][:], a) and torch.equal(store.cond("adarms"), c)
    assert store.num_samples == 3 and store.commit["conds"] == {"adarms": 3}
    assert verify(path).ok


@pytest.mark.parametrize("where", ["acts", "cond"])
def test_nonfinite_reject_names_the_array(tmp_path: Path, where: str) -> None:
    bad = torch.tensor([[1.0, float("nan")], [float("inf"), 0.0]]).to(torch.bfloat16)
    match = r"(layer 3 of role 'r'|cond 'adarms') hold 2 NaN/Inf"
    with actstore.create(tmp_path / "r.zarr", nonfinite="reject") as w, pytest.raises(SchemaMismatchError, match=match):
        if where == "acts":
            w.append("r", rows=_rows(2), acts={3: bad})
        else:
            w.append_cond("adarms", rows=_crow(2), acts=bad)
    store = ActStore.open(tmp_path / "r.zarr")
    assert store.roles == [] and store.conds == []


def test_nonfinite_counted_and_reported_by_verify(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    bad = torch.tensor([[1.0, float("nan")], [float("-inf"), 0.0]])
    with pytest.warns(RuntimeWarning, match="NaN/Inf"), actstore.create(path) as w:
        w.append_cond("adarms", rows=_crow(2), acts=bad)
    report = verify(path)
    assert report.ok and any("cond/adarms/acts holds 2 NaN/Inf" in n for n in report.notes), report.render()
    assert torch.equal(ActStore.open(path).cond("adarms").isnan(), bad.isnan())  # stored as given


def test_newer_format_store_refused_on_open_and_resume(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    with actstore.create(path) as w:
        w.append("r", rows=_rows(2), acts={0: torch.zeros(2, 3)})
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"]["actstore"]["format_version"] = actstore.FORMAT_VERSION + 1
    (path / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(FormatVersionError, match=f"format_version {actstore.FORMAT_VERSION + 1}.*upgrade actstore"):
        ActStore.open(path)
    with pytest.raises(FormatVersionError):
        actstore.create(path, resume=True)
    assert not verify(path).ok and "format_version" in verify(path).render()[1]


def test_non_store_paths(tmp_path: Path) -> None:
    group = tmp_path / "plain.zarr"
    group.mkdir()
    (group / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"x": 1}}))
    with pytest.raises(NotAStoreError, match="no 'actstore' attribute"):
        ActStore.open(group)
    with pytest.raises(NotAStoreError):
        actstore.create(group, resume=True)
    f = tmp_path / "file.zarr"
    f.write_bytes(b"x")
    with pytest.raises(NotAStoreError, match="is a file"):
        ActStore.open(f)
    h5 = tmp_path / "other.h5"
    with h5py.File(h5, "w") as fh:
        fh.attrs["x"] = 1
    with pytest.raises(NotAStoreError, match="not an actstore store"):
        ActStore.open(h5)
    assert (group / "zarr.json").exists() and f.read_bytes() == b"x"  # nothing touched


def test_lock_held_across_processes(tmp_path: Path, backend: str) -> None:
    """A second process cannot open the store for writing while the first holds it; after close it can."""
    path = tmp_path / ("run.zarr" if backend == "zarr" else "run.h5")
    w = actstore.create(path)
    pid = os.fork()
    if pid == 0:  # child: no threads needed, create() fails before starting any
        code = 1
        try:
            actstore.create(path, resume=True)
        except StoreLockedError as exc:
            code = 0 if "already open for writing" in str(exc) else 2
        except BaseException:  # noqa: BLE001 - reported through the exit code
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    w.close()
    actstore.create(path, resume=True).close()


def test_bad_reads_name_the_value(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    with actstore.create(path, chunk_rows=16, block_rows=4) as w:
        w.append("decision", rows=_rows(10), acts={6: torch.zeros(10, 3)})
        w.append_samples(np.arange(10))
    store = ActStore.open(path)
    v = store.select(6, "decision", sample=range(4))
    with pytest.raises(StoreIndexError, match="out of range"):
        v[4]
    with pytest.raises(StoreIndexError, match="boolean mask"):
        store.select(6, "decision", where=np.ones(3, bool))
    with pytest.raises(UnknownKeyError, match=r"no role 'nope'.*roles are \['decision'\]"):
        store.rows("nope")
    with pytest.raises(UnknownKeyError, match=r"no layer '6x'"):
        store["6x", "decision"]
    with pytest.raises(UnknownKeyError, match=r"no step 5 .*steps are \[0\]"):
        store[6, "decision", [0, 5]]
    with pytest.raises(UnknownKeyError, match="no sample -1"):
        store.instructions(6, -1, role="decision")
    with pytest.raises(UnknownKeyError, match="holds no prompt text"):
        store.prompt(0)


def test_disk_full_on_a_small_filesystem(tmp_path: Path) -> None:
    """A real ENOSPC: a 3 MiB tmpfs fills up mid-capture; the error is clear, the last commit survives."""
    import torch

    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        path = mnt / "run.zarr"
        acts = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))  # 256 KiB a batch, incompressible
        w = actstore.create(path, autocommit=False, commit_interval_s=0, chunk_rows=256, block_rows=64)
        committed = 0
        with pytest.raises(actstore.WriterFailedError, match="No space left") as info:
            for i in range(64):
                rows = {"sample": np.arange(256) + 256 * i, "step": np.zeros(256, int), "position": np.arange(256)}
                w.append("r", rows=rows, acts={0: acts})
                w.commit({"batches": i + 1})
                w.flush()
                committed = i + 1
        assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
        assert committed > 0
        with pytest.raises(actstore.WriterFailedError):
            w.close()
        with actstore.ActStore.open(path) as store:
            assert store.commit["progress"] == {"batches": committed}
            assert len(store[0, "r"]) == 256 * committed
            assert torch.equal(store[0, "r"][-256:], acts)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
