"""Object storage: a real S3-compatible server (moto, on loopback) behind s3:// URLs, and fsspec memory://."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from conftest import moto_s3, write_store

import actstore
from actstore import ActStore
from actstore.storage._remote import is_url

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[dict]:
    with moto_s3(monkeypatch_module) as endpoint:
        yield {"endpoint_url": endpoint}


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_url_detection() -> None:
    assert is_url("s3://b/run.zarr") and is_url("memory://x") and not is_url("file:///tmp/x") and not is_url("/tmp/x")


def test_s3_capture_open_slice_resume(s3: dict) -> None:
    url = "s3://acts/run1.zarr"
    truth = write_store(url, n_samples=10, storage_options=s3)  # type: ignore[arg-type]
    store = ActStore.open(url, storage_options=s3)
    ref = truth.acts[("decision", 6)]
    v = store[6, "decision"]
    assert torch.equal(v[:], ref)
    assert torch.equal(v[np.array([5, 0, 77])], ref[[5, 0, 77]])
    assert torch.equal(store[6, "decision", 2][:], ref[torch.from_numpy(truth.rows["decision"]["step"] == 2)])
    assert torch.equal(store.cond("adarms", role="decision")[:3], store.cond("adarms", role="decision")[:3])
    assert store.samples()["prompt"] == truth.samples["prompt"]
    assert store.stored_bytes() > 0
    # an interrupted capture: rows appended after the last commit are lost, resume continues after the commit
    n = len(v)
    extra = torch.randn(40, ref.shape[1]).to(torch.bfloat16)
    rows = {"sample": np.full(40, 10), "step": np.zeros(40, int), "position": np.arange(40)}
    w = actstore.create(url, resume=True, storage_options=s3, autocommit=False)
    w.append("decision", rows=rows, acts={6: extra, 10: extra})
    w.close(commit_pending=False)  # as if killed before the commit
    assert len(ActStore.open(url, storage_options=s3)[6, "decision"]) == n
    with actstore.create(url, resume=True, storage_options=s3) as w:
        w.append("decision", rows=rows, acts={6: extra, 10: extra})
    again = ActStore.open(url, storage_options=s3)[6, "decision"]
    assert len(again) == n + 40 and torch.equal(again[n:], extra) and torch.equal(again[:n], ref)
    # the training loader reads straight from the object store
    store = ActStore.open(url, storage_options=s3)
    batches = [b.clone() for b in store.loader(6, "decision", batch_size=64, seed=1)]
    got = torch.cat(batches)
    assert got.shape == (n + 40, ref.shape[1])
    key = lambda t: sorted(map(tuple, t.float().tolist()))  # noqa: E731
    assert key(got) == key(torch.cat([ref, extra]))


def test_s3_exists_and_missing(s3: dict) -> None:
    url = "s3://acts/run2.zarr"
    write_store(url, n_samples=2, storage_options=s3)  # type: ignore[arg-type]
    with pytest.raises(actstore.StoreExistsError):
        actstore.create(url, storage_options=s3)
    with actstore.create(url, overwrite=True, storage_options=s3):
        pass
    assert ActStore.open(url, storage_options=s3).roles == []
    with pytest.raises(actstore.NotAStoreError):
        ActStore.open("s3://acts/nothing-here.zarr", storage_options=s3)


def test_memory_url_roundtrip() -> None:
    truth = write_store("memory://unit/run.zarr", n_samples=3)  # type: ignore[arg-type]
    assert torch.equal(ActStore.open("memory://unit/run.zarr")[10, "instruction"][:], truth.acts[("instruction", 10)])


def test_remote_benchmark_smoke() -> None:
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_remote", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_remote.py"
    )
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["bench_remote"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    res = mod.main(mod.RemoteBench(smoke=True))
    for where in ("local", "s3_moto"):
        assert res[where]["seq_read_GBps"] > 0 and res[where]["loader_rows_per_s"] > 0
