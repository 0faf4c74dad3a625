"""StoreWriter: commits, resume, transactions, backpressure, errors surfacing, and input validation."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_store

import actstore
from actstore import ActStore, SchemaMismatchError, StoreExistsError, StoreLockedError, WriterFailedError


def _rows(n: int, sample0: int = 0) -> dict[str, np.ndarray]:
    return {"sample": np.arange(sample0, sample0 + n), "step": np.zeros(n, int), "position": np.zeros(n, int)}


def test_resume_appends_after_committed_rows(store_path: Path) -> None:
    a = torch.randn(333, 16).to(torch.bfloat16)
    with actstore.create(store_path, chunk_rows=64, block_rows=16) as w:
        w.append("r", rows=_rows(100), acts={0: a[:100], 1: a[:100] * 2})
        w.append_samples(np.arange(5))
        w.commit({"batches": 1})
    with actstore.create(store_path, resume=True) as w:
        assert w.committed_progress == {"batches": 1}
        w.append("r", rows=_rows(233, 100), acts={0: a[100:], 1: a[100:] * 2})
        w.append_samples(np.arange(5, 9))
        with pytest.raises(SchemaMismatchError, match="unique"):
            w.append_samples(np.array([3]))
    store = ActStore.open(store_path)
    assert torch.equal(store[0, "r"][:], a) and torch.equal(store[1, "r"][:], a * 2)
    np.testing.assert_array_equal(store.rows("r")["sample"], np.arange(333))
    np.testing.assert_array_equal(store.samples()["sample"], np.arange(9))


def test_resume_missing_store_creates_it(store_path: Path) -> None:
    with actstore.create(store_path, resume=True) as w:
        w.append("r", rows=_rows(3), acts={0: torch.zeros(3, 4)})
    assert len(ActStore.open(store_path)[0, "r"]) == 3


def test_transaction_not_committed_on_exception(store_path: Path) -> None:
    a = torch.randn(40, 4)
    with pytest.raises(RuntimeError, match="boom"), actstore.create(
        store_path, autocommit=False, commit_interval_s=0, chunk_rows=16, block_rows=4
    ) as w:
        w.append("r", rows=_rows(20), acts={0: a[:20]})
        w.commit({"batches": 1})
        w.append("r", rows=_rows(20, 20), acts={0: a[20:]})
        raise RuntimeError("boom")
    with ActStore.open(store_path) as store:
        assert store.commit["progress"] == {"batches": 1}
        assert torch.equal(store[0, "r"][:], a[:20])
    with actstore.create(store_path, resume=True, autocommit=False) as w:  # resume overwrites the uncommitted tail
        w.append("r", rows=_rows(5, 20), acts={0: a[30:35]})
    assert torch.equal(ActStore.open(store_path)[0, "r"][:], torch.cat([a[:20], a[30:35]]))


def test_worker_error_surfaces_on_next_call_and_close(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = actstore.create(store_path, chunk_rows=16, block_rows=4)
    boom = OSError(28, "No space left on device")

    def fail(*args: object, **kwargs: object) -> None:
        raise boom

    monkeypatch.setattr(w._be, "write_chunk", fail)
    w.append("r", rows=_rows(64), acts={0: torch.zeros(64, 4)})
    with pytest.raises(WriterFailedError, match="No space left") as info:
        for i in range(100):  # the failure reaches a later call
            w.append("r", rows=_rows(16, 64 + 16 * i), acts={0: torch.zeros(16, 4)})
            w._thread.join(0.01)
    assert info.value.__cause__ is boom
    with pytest.raises(WriterFailedError):
        w.close()


def test_error_on_close_only(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = actstore.create(store_path, chunk_rows=16, block_rows=4)
    monkeypatch.setattr(w._be, "write_meta", lambda *a, **k: (_ for _ in ()).throw(OSError("disk gone")))
    w.append("r", rows=_rows(3), acts={0: torch.zeros(3, 4)})
    with pytest.raises(WriterFailedError, match="disk gone"):
        w.close()
    w.close()  # idempotent


def test_backpressure_and_done_callbacks(store_path: Path) -> None:
    done = []
    lock = threading.Lock()
    a = torch.randn(50 * 64, 32)
    with actstore.create(store_path, queue_bytes=64 * 32 * 4, chunk_rows=128, block_rows=32) as w:
        for i in range(50):
            w.append("r", rows=_rows(64, 64 * i), acts={0: a[64 * i : 64 * (i + 1)]}, done=lambda i=i: (lock.acquire(), done.append(i), lock.release()))
    assert sorted(done) == list(range(50))
    assert torch.equal(ActStore.open(store_path)[0, "r"][:], a)


def test_exists_overwrite_and_lock(store_path: Path) -> None:
    write_store(store_path, n_samples=2)
    with pytest.raises(StoreExistsError, match="resume=True"):
        actstore.create(store_path)
    with pytest.raises(FileExistsError):
        actstore.create(store_path)
    w = actstore.create(store_path, overwrite=True)
    with pytest.raises(StoreLockedError, match="already open for writing"):
        actstore.create(store_path, resume=True)
    w.close()
    assert ActStore.open(store_path).roles == []


def test_overwrite_refuses_foreign_directory(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    (d / "precious.txt").write_text("x")
    with pytest.raises(StoreExistsError, match="not an actstore store"):
        actstore.create(d, overwrite=True)
    assert (d / "precious.txt").exists()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda w: w.append("r", rows=_rows(3), acts={0: torch.zeros(3, 4), 1: torch.zeros(3, 4)}), "exactly those"),
        (lambda w: w.append("r", rows=_rows(3), acts={0: torch.zeros(3, 5)}), "d=5, but the store holds d=4"),
        (lambda w: w.append("r", rows=_rows(3), acts={0: torch.zeros(3, 4, dtype=torch.float16)}), "float16, but the store holds float32"),
        (lambda w: w.append("r", rows=_rows(2), acts={0: torch.zeros(3, 4)}), "has 2 rows but the activations have 3"),
        (lambda w: w.append("r", rows={"sample": np.arange(3)}, acts={0: torch.zeros(3, 4)}), "lack the required columns"),
        (lambda w: w.append("r", rows={**_rows(3), "extra": np.arange(3)}, acts={0: torch.zeros(3, 4)}), "unexpected"),
        (lambda w: w.append("r", rows=_rows(3), acts={0: torch.zeros(3, 4, dtype=torch.int32)}), "valid dtypes"),
        (lambda w: w.append("r", rows=_rows(3), acts={0: torch.zeros(3)}), "must be 2-D"),
        (lambda w: w.append("r", rows=_rows(3), acts={}), "non-empty mapping"),
        (lambda w: w.append("../r", rows=_rows(3), acts={0: torch.zeros(3, 4)}), "cannot be used"),
        (lambda w: w.append("r", rows=_rows(3), acts={"/etc": torch.zeros(3, 4)}), "cannot be used"),
        (lambda w: w.append_samples(np.arange(2), prompt=["a" * 5000, "b"]), "at most 1024 bytes"),
        (lambda w: w.append_samples(np.arange(2), prompt="ab"), "list of 2 strings"),
        (lambda w: w.append_samples(np.array([1, 1])), "unique"),
        (lambda w: w.append_cond("adarms", rows={"sample": np.arange(3)}, acts=torch.zeros(3, 4)), "required columns"),
        (lambda w: w.commit({"x": object()}), "JSON"),
    ],
)
def test_bad_input_is_refused_and_nothing_written(store_path: Path, call, match: str) -> None:
    a = torch.randn(3, 4)
    with actstore.create(store_path) as w:
        w.append("r", rows=_rows(3), acts={0: a})
        with pytest.raises(ValueError, match=match):
            call(w)
    store = ActStore.open(store_path)
    assert store.roles == ["r"] and torch.equal(store[0, "r"][:], a)


def test_closed_writer_refuses(store_path: Path) -> None:
    w = actstore.create(store_path)
    w.close()
    with pytest.raises(actstore.WriterClosedError):
        w.append("r", rows=_rows(1), acts={0: torch.zeros(1, 2)})


def test_durable_mode_roundtrip(store_path: Path) -> None:
    truth = write_store(store_path, n_samples=4, durable=True, commit_interval_s=0)
    store = ActStore.open(store_path)
    assert torch.equal(store[6, "decision"][:], truth.acts[("decision", 6)])
    assert store.commit["seq"] > 4  # every mark committed at once


def test_bad_backend_and_attrs(tmp_path: Path) -> None:
    with pytest.raises(SchemaMismatchError, match="valid backends"):
        actstore.create(tmp_path / "x", backend="s4")
    with pytest.raises(SchemaMismatchError, match="JSON"):
        actstore.create(tmp_path / "y.zarr", attrs={"f": object()})


def test_nonfinite_counted_and_warned(store_path: Path) -> None:
    a = torch.randn(100, 8).to(torch.bfloat16)
    a[3, 2] = float("nan")
    a[50, 1] = float("-inf")
    with pytest.warns(RuntimeWarning, match="NaN/Inf"), actstore.create(store_path, chunk_rows=32, block_rows=8) as w:
        w.append("r", rows=_rows(60), acts={0: a[:60], 1: a[:60].float()})
        w.flush()
        w.append("r", rows=_rows(40, 60), acts={0: a[60:], 1: a[60:].float()})
    with ActStore.open(store_path) as store:
        assert store.commit["nonfinite"] == {"acts/r/0": 2, "acts/r/1": 2}
        assert torch.equal(store[0, "r"][:].view(torch.uint16), a.view(torch.uint16))  # stored as they are


def test_nonfinite_reject_writes_nothing(store_path: Path) -> None:
    bad = torch.zeros(4, 3)
    bad[1, 1] = float("inf")
    with actstore.create(store_path, nonfinite="reject") as w:
        w.append("r", rows=_rows(2), acts={0: torch.ones(2, 3)})
        with pytest.raises(SchemaMismatchError, match="1 NaN/Inf values; refused"):
            w.append("r", rows=_rows(4, 2), acts={0: bad})
    with ActStore.open(store_path) as store:
        assert len(store[0, "r"]) == 2


@pytest.mark.parametrize("n_first, n_bad", [(20, 7), (20, 50), (64, 64), (5, 200)])
def test_rollback_forgets_the_failed_batch(store_path: Path, n_first: int, n_bad: int) -> None:
    a = torch.randn(500, 4)
    with actstore.create(store_path, autocommit=False, commit_interval_s=0, chunk_rows=16, block_rows=4) as w:
        w.append_samples(np.arange(2))
        w.append("r", rows=_rows(n_first), acts={0: a[:n_first]})
        w.commit({"batches": 1})
        w.flush()
        w.append_samples(np.arange(2, 4))
        w.append("r", rows=_rows(n_bad, 1000), acts={0: torch.full((n_bad, 4), 9.0)})
        w.flush()  # the failed batch's rows may already be on disk ...
        w.rollback()  # ... and are forgotten
        w.append_samples(np.arange(2, 4))  # ids of the failed batch may be used again
        w.append("r", rows=_rows(30, n_first), acts={0: a[n_first : n_first + 30]})
        w.commit({"batches": 2})
    with ActStore.open(store_path) as store:
        assert torch.equal(store[0, "r"][:], a[: n_first + 30])
        np.testing.assert_array_equal(store.rows("r")["sample"], np.arange(n_first + 30))
        np.testing.assert_array_equal(store.samples()["sample"], np.arange(4))
        assert store.commit["progress"] == {"batches": 2}


def test_forgotten_close_commits_at_exit(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import numpy as np, torch, actstore\n"
        f"w = actstore.create({str(tmp_path / 'f.zarr')!r}, autocommit=False, commit_interval_s=3600)\n"
        "w.append('r', rows={'sample': np.arange(5), 'step': np.zeros(5, int), 'position': np.zeros(5, int)},"
        " acts={0: torch.ones(5, 3)})\n"
        "w.commit({'batches': 1})\n"  # never closed, and the commit interval has not passed
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "closing the writer" in done.stderr
    with ActStore.open(tmp_path / "f.zarr") as store:
        assert len(store[0, "r"]) == 5 and store.commit["progress"] == {"batches": 1}


def test_a_failed_resume_releases_the_lock(tmp_path: Path) -> None:
    """create(resume=True) reads the partial last chunk back; when that fails (here a damaged block), the error
    is raised and the store's lock is released at once, so a repaired or another attempt is not locked out."""
    path = tmp_path / "s.zarr"
    with actstore.create(path, chunk_rows=64, block_rows=16) as w:
        w.append("decision", rows={"sample": np.arange(40), "step": np.zeros(40, np.int64),
                                   "position": np.zeros(40, np.int64)}, acts={0: torch.ones(40, 8)})
    chunk = path / "acts" / "decision" / "0" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[8] ^= 0xFF  # inside the first block's compressed bytes: its crc32c no longer matches
    chunk.write_bytes(bytes(data))
    for _ in range(2):  # the second attempt would be StoreLockedError if the first had kept the lock
        with pytest.raises(actstore.CorruptStoreError):
            actstore.create(path, resume=True, chunk_rows=64, block_rows=16)
