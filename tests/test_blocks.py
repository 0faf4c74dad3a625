"""ArrayReader / BlockCache / ConcatReader: reads decode each touched block once; the cache is bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import write_store

from actstore import ActStore
from actstore._blocks import BlockCache, ConcatReader


def test_cache_is_lru_and_bounded() -> None:
    cache = BlockCache(max_bytes=3 * 80)
    for i in range(5):
        cache.put(("p", "k", i), np.zeros(10, dtype=np.float64))
    assert cache.get(("p", "k", 0)) is None and cache.get(("p", "k", 4)) is not None
    cache.get(("p", "k", 2))
    cache.put(("p", "k", 5), np.zeros(10))
    assert cache.get(("p", "k", 2)) is not None and cache.get(("p", "k", 3)) is None
    cache.put(("p", "k", 9), np.zeros(1000))  # larger than the budget: not cached
    assert cache.get(("p", "k", 9)) is None


def test_fancy_read_decodes_each_block_once(tmp_path: Path, monkeypatch) -> None:
    truth = write_store(tmp_path / "s.zarr", n_samples=30, layers=(1,))
    store = ActStore.open(tmp_path / "s.zarr", cache_bytes=0)
    view = store[1, "decision"]
    reader = view._reader
    calls: list[int] = []
    original = reader._decode
    monkeypatch.setattr(reader, "_decode", lambda blob, b, out: (calls.append(b), original(blob, b, out)))
    idx = np.random.default_rng(0).integers(0, len(view), size=400)
    got = view.numpy(idx)
    np.testing.assert_array_equal(got, truth.acts[("decision", 1)].view(torch.uint16).numpy()[idx])
    assert sorted(calls) == sorted(set(calls)) == sorted(set((idx // reader.block_rows).tolist()))


def test_chunk_decode_into_buffer(tmp_path: Path) -> None:
    truth = write_store(tmp_path / "s.zarr", n_samples=10, layers=(1,))
    reader = ActStore.open(tmp_path / "s.zarr")[1, "decision"]._reader
    out = np.empty((reader.chunk_rows, reader.width), dtype=reader.dtype)
    reader.read_chunk_into(1, out)
    ref = truth.acts[("decision", 1)].view(torch.uint16).numpy()
    np.testing.assert_array_equal(out, ref[64:128])


def test_concat_reader_matches_concatenation(tmp_path: Path) -> None:
    parts = [write_store(tmp_path / f"p{i}.zarr", n_samples=5 + 4 * i, layers=(1,), seed=i) for i in range(3)]
    readers = [ActStore.open(p.path)[1, "decision"]._reader for p in parts]
    cat = ConcatReader(readers, readers[0].width, readers[0].dtype, readers[0].chunk_rows)
    ref = np.concatenate([p.acts[("decision", 1)].view(torch.uint16).numpy() for p in parts])
    assert cat.n_rows == ref.shape[0]
    np.testing.assert_array_equal(cat.read_range(3, ref.shape[0] - 2), ref[3:-2])
    idx = np.random.default_rng(1).integers(0, ref.shape[0], size=200)
    np.testing.assert_array_equal(cat.read_rows(idx), ref[idx])
