"""``shuffle_store``: the out-of-core uniform shuffle of a store (actstore/tools/_reshuffle.py)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import actstore
from actstore.tools._reshuffle import ShuffleConfig, bucket_permutation, shuffle_store
from actstore.tools._verify import verify

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ the permutation
@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 300), chunk=st.integers(1, 64), buckets=st.integers(1, 9), seed=st.integers(0, 2**32))
def test_bucket_permutation_is_a_permutation(n: int, chunk: int, buckets: int, seed: int) -> None:
    perm = bucket_permutation(n, chunk, buckets, seed)
    assert perm.dtype == np.int64
    assert np.array_equal(np.sort(perm), np.arange(n))


@pytest.mark.parametrize(("chunk", "buckets"), [(2, 2), (4, 3), (1, 4)])
def test_bucket_permutation_is_uniform(chunk: int, buckets: int) -> None:
    """All 24 orders of 4 rows are equally likely: chi-square over 12,000 seeds below its 0.9999 quantile (df=23:
    about 56). Deterministic seeds, so the test cannot flake; a non-uniform scheme (e.g. no within-bucket
    permutation, or buckets chosen per chunk) lands far above it."""
    index = {p: i for i, p in enumerate(permutations(range(4)))}
    counts = np.zeros(24)
    trials = 12_000
    for seed in range(trials):
        counts[index[tuple(bucket_permutation(4, chunk, buckets, seed).tolist())]] += 1
    chi2 = float(((counts - trials / 24) ** 2 / (trials / 24)).sum())
    assert chi2 < 56.0, (chi2, counts)


# ------------------------------------------------------------------------------------------ stores
def _source(path: Path, n: int = 1000, *, backend_suffix: str = ".zarr") -> dict[str, np.ndarray]:
    """A small capture-like store: samples of 50 consecutive rows, 5 steps, two bf16 layers, a cond, prompts."""
    r = np.arange(n)
    sample, step = r // 50, (r // 10) % 5
    g = torch.Generator().manual_seed(0)
    a6 = torch.randn(n, 16, generator=g).to(torch.bfloat16)
    a10 = torch.randn(n, 8, generator=g)
    n_samples = int(sample.max()) + 1
    cond = torch.randn(n_samples * 5, 4, generator=g)
    with actstore.create(path, chunk_rows=64, block_rows=16, autocommit=False) as w:
        w.append_samples(np.arange(n_samples), prompt=[f"task {i}" for i in range(n_samples)],
                         episode=np.arange(n_samples) // 3)
        w.append_cond("adarms", {"sample": np.repeat(np.arange(n_samples), 5), "step": np.tile(np.arange(5), n_samples)},
                      cond)
        for a in range(0, n, 300):
            b = min(n, a + 300)
            w.append("decision", {"sample": sample[a:b], "step": step[a:b], "position": r[a:b], "frame": r[a:b] % 7},
                     {6: a6[a:b], 10: a10[a:b]})
            w.commit({"batches": a // 300 + 1})
    return {"a6": a6.view(torch.int16).numpy(), "a10": a10.numpy(), "sample": sample, "step": step, "position": r,
            "frame": r % 7, "cond": cond.numpy()}


def _check_shuffled(src: Path, dst: Path, truth: dict[str, np.ndarray], seed: int, n_buckets: int) -> np.ndarray:
    s = actstore.ActStore.open(dst)
    rows = s.rows("decision")
    perm = rows["position"]  # position was the global source row index
    assert np.array_equal(perm, bucket_permutation(len(perm), 64, n_buckets, seed))
    assert not np.array_equal(perm, np.arange(len(perm)))
    for col in ("sample", "step", "frame"):
        assert np.array_equal(rows[col], truth[col][perm])
    np.testing.assert_array_equal(s[6, "decision"][:].view(torch.int16).numpy(), truth["a6"][perm])
    np.testing.assert_array_equal(s[10, "decision"][:].numpy(), truth["a10"][perm])
    # conditioning and samples unchanged, and still aligned row for row through (sample, step)
    with actstore.ActStore.open(src) as orig:
        np.testing.assert_array_equal(s.cond("adarms").numpy(), truth["cond"])
        aligned = s.cond("adarms", role="decision").numpy()
        np.testing.assert_array_equal(aligned, orig.cond("adarms", role="decision").numpy()[perm])
        assert [s.prompt(i) for i in range(3)] == [orig.prompt(i) for i in range(3)]
        assert np.array_equal(s.samples()["episode"], orig.samples()["episode"])
        assert s.commit["progress"]["batches"] == orig.commit["progress"]["batches"]
        assert s.meta["layout"] == orig.meta["layout"]
    assert s.commit["progress"]["shuffle"]["complete"] is True
    return perm


def test_shuffle_store_is_the_planned_permutation_bit_exact(tmp_path: Path) -> None:
    truth = _source(tmp_path / "src.zarr")
    row_bytes = 16 * 2 + 8 * 4 + 4 * 8
    bucket_bytes = 1 << 16  # 1000 rows x 96 B = 96 kB: 2 buckets
    shuffle_store(tmp_path / "src.zarr", tmp_path / "dst.zarr", seed=3, bucket_bytes=bucket_bytes)
    _check_shuffled(tmp_path / "src.zarr", tmp_path / "dst.zarr", truth, 3, math.ceil(1000 * row_bytes / bucket_bytes))
    assert not Path(f"{tmp_path / 'dst.zarr'}.shuffle-work").exists()
    report = verify(tmp_path / "dst.zarr")
    assert report.ok, report


def test_shuffle_to_hdf5_and_recode(tmp_path: Path) -> None:
    truth = _source(tmp_path / "src.zarr")
    shuffle_store(tmp_path / "src.zarr", tmp_path / "dst.h5", seed=1, codec="none")
    s = actstore.ActStore.open(tmp_path / "dst.h5")
    assert s.meta["layout"]["codec"] == "none"
    perm = s.rows("decision")["position"]
    np.testing.assert_array_equal(s[6, "decision"][:].view(torch.int16).numpy(), truth["a6"][perm])


def test_shuffle_refuses_to_clobber(tmp_path: Path) -> None:
    _source(tmp_path / "src.zarr")
    with pytest.raises(actstore.SchemaMismatchError, match="onto itself"):
        shuffle_store(tmp_path / "src.zarr", tmp_path / "src.zarr")
    shuffle_store(tmp_path / "src.zarr", tmp_path / "dst.zarr")
    with pytest.raises(actstore.StoreExistsError, match="overwrite"):
        shuffle_store(tmp_path / "src.zarr", tmp_path / "dst.zarr")
    shuffle_store(tmp_path / "src.zarr", tmp_path / "dst.zarr", overwrite=True, seed=5)
    assert actstore.ActStore.open(tmp_path / "dst.zarr").commit["progress"]["shuffle"]["seed"] == 5
    with pytest.raises(actstore.ActStoreError, match="seed"):
        ShuffleConfig(seed=-1)


def test_interrupted_shuffle_resumes_to_the_same_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    truth = _source(tmp_path / "src.zarr")
    calls = {"n": 0}
    real_append = actstore.StoreWriter.append

    def failing_append(self, role, rows, acts, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash in bucket 3")
        return real_append(self, role, rows, acts, **kw)

    monkeypatch.setattr(actstore.StoreWriter, "append", failing_append)
    with pytest.raises(RuntimeError, match="simulated"):
        shuffle_store(tmp_path / "src.zarr", tmp_path / "dst.zarr", seed=2, bucket_bytes=1 << 16 >> 2)
    assert Path(f"{tmp_path / 'dst.zarr'}.shuffle-work", "state.json").is_file()
    with pytest.raises(actstore.StoreExistsError, match="unfinished shuffle"):
        shuffle_store(tmp_path / "src.zarr", tmp_path / "dst.zarr", seed=9, bucket_bytes=1 << 16 >> 2)
    monkeypatch.setattr(actstore.StoreWriter, "append", real_append)
    shuffle_store(tmp_path / "src.zarr", tmp_path / "dst.zarr", seed=2, bucket_bytes=1 << 16 >> 2)
    _check_shuffled(tmp_path / "src.zarr", tmp_path / "dst.zarr", truth, 2, math.ceil(1000 * 96 / (1 << 14)))


def test_sigkilled_shuffle_resumes_bit_exact(tmp_path: Path) -> None:
    """A real SIGKILL part-way through (after the scatter, during the permute pass), then a rerun."""
    truth = _source(tmp_path / "src.zarr", n=6000)
    code = (
        "import sys, actstore\n"
        "from actstore.tools._reshuffle import shuffle_store\n"
        "real = actstore.StoreWriter.commit\n"
        "def slow(self, progress=None):\n"
        "    real(self, progress)\n"
        "    import time; time.sleep(0.15)\n"
        "actstore.StoreWriter.commit = slow\n"
        f"shuffle_store({str(tmp_path / 'src.zarr')!r}, {str(tmp_path / 'dst.zarr')!r}, seed=4, bucket_bytes=1 << 16)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    state = Path(f"{tmp_path / 'dst.zarr'}.shuffle-work", "state.json")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file() and '"decision"' in state.read_text().split('"counts"')[1]:
            time.sleep(0.2)
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the shuffle finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(60)
    progress = actstore.ActStore.open(tmp_path / "dst.zarr").commit["progress"] or {}
    done = (progress.get("shuffle") or {}).get("buckets_done", {})
    assert 0 <= done.get("decision", 0) < math.ceil(6000 * 96 / (1 << 16))  # killed inside the permute pass
    shuffle_store(tmp_path / "src.zarr", tmp_path / "dst.zarr", seed=4, bucket_bytes=1 << 16)
    _check_shuffled(tmp_path / "src.zarr", tmp_path / "dst.zarr", truth, 4, math.ceil(6000 * 96 / (1 << 16)))


# ------------------------------------------------------------------------------------------ mixing
def _pair_fraction(labels_BN: np.ndarray) -> float:
    fr = []
    for lab in labels_BN:
        _, c = np.unique(lab, return_counts=True)
        fr.append((c * (c - 1)).sum() / (lab.size * (lab.size - 1)))
    return float(np.mean(fr))


def test_default_loader_over_a_shuffled_store_mixes_like_a_uniform_permutation(tmp_path: Path) -> None:
    """Samples of 100 consecutive rows, 10 steps: the default loader's batches on the original store hold far too
    many rows of one sample; on the shuffled store their same-sample and same-step fractions match a uniform
    permutation within the simulated sampling error (4 epochs averaged: 2 sd)."""
    n, bs = 40_000, 1000
    r = np.arange(n)
    sample, step = r // 100, (r // 10) % 10
    with actstore.create(tmp_path / "q.zarr", chunk_rows=1024, block_rows=256) as w:
        w.append("decision", {"sample": sample, "step": step, "position": r}, {0: torch.zeros(n, 2)})
    shuffle_store(tmp_path / "q.zarr", tmp_path / "s.zarr", seed=0)
    rng = np.random.default_rng(0)

    def reference(labels: np.ndarray, sims: int = 40) -> tuple[float, float]:
        vals = [_pair_fraction(rng.permutation(labels)[: n // bs * bs].reshape(-1, bs)) for _ in range(sims)]
        return float(np.mean(vals)), float(np.std(vals))

    def measured(path: Path, epochs: int = 4) -> tuple[float, float]:
        store = actstore.ActStore.open(path)
        ld = store.loader(0, "decision", batch_size=bs, with_rows=True, drop_last=True)
        s_fr, t_fr = [], []
        for epoch in range(epochs):
            ld.set_epoch(epoch)
            batches = [rows for _, rows in ld]
            s_fr.append(_pair_fraction(np.stack([b["sample"].numpy() for b in batches])))
            t_fr.append(_pair_fraction(np.stack([b["step"].numpy() for b in batches])))
        return float(np.mean(s_fr)), float(np.mean(t_fr))

    ref_s, sd_s = reference(sample)
    ref_t, sd_t = reference(step)
    got_s, got_t = measured(tmp_path / "s.zarr")
    assert abs(got_s - ref_s) < 2 * sd_s, (got_s, ref_s, sd_s)
    assert abs(got_t - ref_t) < 2 * sd_t, (got_t, ref_t, sd_t)
    before_s, _ = measured(tmp_path / "q.zarr", epochs=1)
    assert before_s > ref_s + 10 * sd_s  # the unshuffled store is far from uniform (what the shuffle fixes)
