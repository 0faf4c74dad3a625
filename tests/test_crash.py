"""Crash consistency: SIGKILL at random moments and at chosen points of the write path, resume, SIGTERM / SIGINT.

The writer is ``tests/_crash_writer.py``: a deterministic pi0-like capture (samples, instruction rows, decision
rows for 3 steps and 2 layers, adarms cond) that commits every batch, as ``capture.Recorder`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import _crash_writer as cw
import numpy as np
import pytest
import torch

import actstore
from actstore import ActStore
from actstore.tools._verify import verify

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("_crash_writer.py")
SEED = 1234
BATCHES = 40
KILLS = 36
CHAINS = 4


def script_env() -> dict[str, str]:
    """Environment for the writer subprocess: the repository on ``sys.path``, single-threaded BLAS."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@cache
def _expected(seed: int, batches: int, d: int = cw.D) -> dict[str, Any]:
    return cw.expected(seed, batches, d)


def read_all(store: ActStore) -> dict[str, Any]:
    """Every committed array of a store with an ``adarms`` cond, as numpy (bf16 as uint16 bits)."""
    out: dict[str, Any] = {}
    for role in store.roles:
        rows = store.rows(role)
        out[("rows", role)] = {c: rows[c] for c in ("sample", "step", "position")}
        for layer in store.layers_of(role):
            out[(role, layer)] = store[layer, role][:].view(torch.uint16).numpy()
    if "adarms" in store.conds:
        out["cond_rows"] = store.cond_rows("adarms")
        out["cond"] = store.cond("adarms").numpy()
    samples = store.samples()
    for key in ("sample", "episode", "instruction_mask", "prompt"):
        if key in samples:
            out[key] = samples[key]
    return out


def assert_store_is_batches(path: Path, seed: int, d: int = cw.D) -> int:
    """The store opens, holds exactly the first k committed batches bit for bit, and its tables agree; return k."""
    store = ActStore.open(path)
    progress = store.commit["progress"] or {}
    k = int(progress.get("batches", 0))
    got = read_all(store)
    exp = _expected(seed, k, d)
    if k == 0:
        assert store.num_samples == 0 and all(store.num_rows(r) == 0 for r in store.roles)
        return 0
    for key, want in exp.items():
        if key == "batches":
            continue
        have = got[key]
        if isinstance(want, dict):
            for col, values in want.items():
                np.testing.assert_array_equal(have[col], values, err_msg=f"{path}: {key} {col} after {k} batches")
        elif isinstance(want, list):
            assert have == want, f"{path}: {key} after {k} batches"
        else:
            np.testing.assert_array_equal(have, want, err_msg=f"{path}: {key} after {k} batches")
    # the tables agree with each other (independently of the generator)
    dec = got[("rows", "decision")]
    crow = got["cond_rows"]
    pairs = set(zip(crow["sample"].tolist(), crow["step"].tolist(), strict=True))
    assert set(zip(dec["sample"].tolist(), dec["step"].tolist(), strict=True)) <= pairs
    assert len(pairs) == len(crow["sample"])
    ids = set(got["sample"].tolist())
    assert set(dec["sample"].tolist()) <= ids and set(got[("rows", "instruction")]["sample"].tolist()) <= ids
    assert len(ids) == k * cw.SAMPLES_PER_BATCH
    assert store.num_rows("decision") == k * cw.SAMPLES_PER_BATCH * cw.STEPS * cw.HORIZON
    report = verify(path)
    assert report.ok, "\n".join(report.render())
    store.close()
    return k


def assert_same_store(a: Path, b: Path) -> None:
    """Two stores hold the same committed data (and the same commit counts)."""
    sa, sb = ActStore.open(a), ActStore.open(b)
    for key in ("roles", "conds", "samples", "progress"):
        assert sa.commit[key] == sb.commit[key], key
    da, db = read_all(sa), read_all(sb)
    assert da.keys() == db.keys()
    for key, va in da.items():
        if isinstance(va, dict):
            for col in va:
                np.testing.assert_array_equal(va[col], db[key][col])
        elif isinstance(va, list):
            assert va == db[key]
        else:
            np.testing.assert_array_equal(va, db[key])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_loop_leaves_committed_prefix_and_resumes(tmp_path: Path) -> None:
    """36 SIGKILLs (half at random moments, half at seeded points inside chunk / array-meta / commit writes),
    each resumed from the store the previous kill left; every snapshot holds exactly its committed batches."""
    out = tmp_path / "kills"
    subprocess.run(
        [sys.executable, str(SCRIPT), "killloop", str(out), "--seed", str(SEED), "--kills", str(KILLS),
         "--chains", str(CHAINS), "--batches", str(BATCHES)],
        env=script_env(), check=True, timeout=200,
    )
    log = json.loads((out / "log.json").read_text())
    assert len(log["snaps"]) == KILLS
    ref = Path(log["reference"]["path"])
    assert assert_store_is_batches(ref, SEED) == BATCHES
    killed = [s for s in log["snaps"] if s["exit"] == -signal.SIGKILL]
    assert len(killed) >= KILLS * 0.8, f"only {len(killed)} of {KILLS} children died by SIGKILL: {log['snaps']}"
    assert all(s["exit"] in (-signal.SIGKILL, 0) for s in log["snaps"]), log["snaps"]
    seen = set()
    created: set[int] = set()  # chains whose store exists
    for snap in log["snaps"]:
        if not (Path(snap["path"]) / "zarr.json").exists():
            # a timed kill that landed before create() wrote the store's first zarr.json (the directory may exist,
            # holding its lock file: test_resume_after_kill_inside_create): nothing can have been committed, and
            # that is only possible while the chain's store does not exist yet
            assert snap["chain"] not in created, f"the store of chain {snap['chain']} vanished: {snap}"
            seen.add(0)
            continue
        created.add(snap["chain"])
        seen.add(assert_store_is_batches(Path(snap["path"]), SEED))
    assert len(seen) >= 8, f"kills landed after too few distinct batch counts: {sorted(seen)}"
    for chain in log["chains"]:
        assert chain["exit"] == 0
        assert assert_store_is_batches(Path(chain["path"]), SEED) == BATCHES
        assert_same_store(Path(chain["path"]), ref)


def test_resume_after_kill_inside_create(tmp_path: Path) -> None:
    """A kill between create()'s mkdir and its first zarr.json leaves only the lock file (and maybe a temp file);
    resume must start the store afresh instead of failing with NotAStoreError."""
    path = tmp_path / "run.zarr"
    path.mkdir()
    (path / ".actstore.lock").touch()
    (path / ".zarr.json.0123.tmp").write_bytes(b'{"zarr_fo')
    cw.write(str(path), SEED, 2)
    assert assert_store_is_batches(path, SEED) == 2


def _start(path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "write", str(path), "--seed", str(SEED), "--batches", "400", "--slow", "0.05",
         *extra],
        env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_commits(proc: subprocess.Popen[str], n: int) -> list[str]:
    lines = []
    assert proc.stdout is not None
    while len(lines) < n:
        line = proc.stdout.readline()
        assert line, f"writer exited early: {proc.stderr.read() if proc.stderr else ''}"
        lines.append(line.strip())
    return lines


@pytest.mark.timeout(120)
def test_sigterm_and_sigint_close_cleanly(tmp_path: Path) -> None:
    """SIGTERM stops after the current batch and closes (exit 0); SIGINT interrupts wherever it lands (exit 130).
    Both leave a store whose commit is the last completed batch, on both backends."""
    runs = {}
    for backend in ("zarr", "hdf5"):
        for sig in (signal.SIGTERM, signal.SIGINT):
            path = tmp_path / f"{sig.name}.{'zarr' if backend == 'zarr' else 'h5'}"
            runs[(backend, sig)] = (path, _start(path))
    lines = {key: _wait_for_commits(proc, 3) for key, (_, proc) in runs.items()}
    for (_, sig), (_, proc) in runs.items():
        proc.send_signal(sig)
    for (backend, sig), (path, proc) in runs.items():
        t0 = time.monotonic()
        assert proc.stdout is not None and proc.stderr is not None
        proc.wait(timeout=60)
        rest, err = proc.stdout.read(), proc.stderr.read()
        print(backend, sig.name, "exited after", round(time.monotonic() - t0, 2), "s")
        got = lines[backend, sig] + rest.splitlines()
        last = max(int(x.split()[1]) for x in got if x.startswith("committed"))
        if sig == signal.SIGTERM:
            assert proc.returncode == 0, err
            assert f"closed {last}" in rest
        else:
            assert proc.returncode == 130, err
            assert "interrupted" in rest
        k = assert_store_is_batches(path, SEED) if path.suffix == ".zarr" else _check_h5(path)
        # SIGINT may land between commit() and the print that reports it
        assert k == last or (sig == signal.SIGINT and k == last + 1), (sig, k, last)
        with actstore.create(path, resume=True, **cw.CONFIG) as w:  # the lock was released
            assert w.committed_progress == {"batches": k}


def _check_h5(path: Path) -> int:
    k = int((ActStore.open(path).commit["progress"] or {}).get("batches", 0))
    assert k >= 3
    got, exp = read_all(ActStore.open(path)), _expected(SEED, k)
    for key in (("decision", 6), ("instruction", 14), "cond", "sample"):
        np.testing.assert_array_equal(got[key], exp[key])
    assert verify(path).ok
    return k


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_loop_on_hdf5_loses_no_committed_row(tmp_path: Path) -> None:
    """HDF5 captures are staged in Zarr and published by atomic rename (``_h5stage``): SIGKILLs at random moments
    and inside staging writes never leave a ``.h5`` that fails to open, and a resume publishes every batch the
    killed writer committed (read from its staging record before the resume), bit for bit."""
    import random
    import shutil

    from actstore.storage._h5stage import staging_path

    rng = random.Random(SEED)
    path = tmp_path / "run.h5"
    batches, seen = 24, set()
    t0 = time.monotonic()
    status = _fork_writer(path, batches, {"how": "none"}, None)
    full = time.monotonic() - t0
    assert os.waitstatus_to_exitcode(status) == 0
    ref = tmp_path / "ref.h5"
    path.rename(ref)
    assert assert_store_is_batches(ref, SEED) == batches
    for i in range(14):
        if i % 2:
            kind, mode = rng.choice(cw.KILL_KINDS), rng.choice(cw.KILL_MODES)
            kill, delay = {"how": "point", "kind": kind, "n": rng.randint(1, 30), "mode": mode}, None
        else:
            kill, delay = {"how": "delay"}, rng.uniform(0.0, full * 0.5)
        status = _fork_writer(path, batches, kill, delay)
        snap = tmp_path / f"snap-{i}" / "run.h5"
        snap.parent.mkdir()
        if path.exists():
            shutil.copy2(path, snap)
        if staging_path(path).exists():
            shutil.copytree(staging_path(path), staging_path(snap))
        if snap.exists():  # whatever the kill hit, a published file opens and holds a committed prefix
            assert assert_store_is_batches(snap, SEED) >= 0
        staged = staging_path(snap)
        committed = 0
        if (staged / "zarr.json").exists():
            with ActStore.open(staged) as s:
                committed = int((s.commit["progress"] or {}).get("batches", 0))
        with actstore.create(snap, resume=True, **cw.CONFIG) as w:  # publishes the staged commit, then closes
            got = int((w.committed_progress or {}).get("batches", 0))
        assert got >= committed, f"kill {i} ({kill}): {committed} batches staged, {got} after resume"
        assert assert_store_is_batches(snap, SEED) == got
        assert not staging_path(snap).exists()
        seen.add(got)
    status = _fork_writer(path, batches, {"how": "none"}, None)
    assert os.waitstatus_to_exitcode(status) == 0
    assert assert_store_is_batches(path, SEED) == batches
    assert_same_store(path, ref)
    assert len(seen) >= 2, f"kills landed after too few distinct batch counts: {sorted(seen)}"


def _fork_writer(path: Path, batches: int, kill: dict[str, Any], delay: float | None) -> int:
    """Fork a ``_crash_writer`` child writing ``path`` (resuming), SIGKILL it after ``delay`` s or at its kill
    point; return its wait status."""
    pid = os.fork()
    if pid == 0:
        cw._child(str(path), SEED, batches, kill)
    if delay is not None:
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]
