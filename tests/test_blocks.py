"""ArrayReader / BlockCache / ConcatReader: reads decode each touched block once; the cache is bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_store

from actstore import ActStore, CorruptStoreError
from actstore.format._codec import BlockCodec, crc32c
from actstore.read._blocks import ArrayReader, BlockCache, ConcatReader


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
    original = reader.decode_block
    monkeypatch.setattr(reader, "decode_block", lambda blob, b, out: (calls.append(b), original(blob, b, out)))
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


def _reader(store: ActStore, role: str, layer: int, **change: int) -> ArrayReader:
    """An ArrayReader over a stored array with some of its metadata facts replaced (as a damaged record would)."""
    layout = store.meta["layout"]
    be = store.backend  # the test builds the reader the store would build from a wrong record
    width = change.get("width", 32)
    dtype = np.dtype("<u2")
    codec = BlockCodec(layout["codec"], dtype, checksum=be.checksums, block_bytes=int(layout["block_rows"]) * width * 2)
    n_rows = change.get("n_rows", store.meta["commit"]["roles"][role])
    return ArrayReader(be, f"acts/{role}/{layer}", width, dtype, codec, int(layout["chunk_rows"]),
                       int(layout["block_rows"]), n_rows, BlockCache(0))


@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_wrong_width_is_an_error_not_uninitialised_memory(tmp_path: Path, codec: str) -> None:
    """d = 32 stored, 36 believed (one flipped bit of the record): every read path raises CorruptStoreError naming
    the array and the block, instead of returning rows filled past the block's data with whatever was in memory."""
    write_store(tmp_path / "s.zarr", n_samples=30, layers=(1,), codec=codec)
    with ActStore.open(tmp_path / "s.zarr", cache_bytes=0) as store:
        r = _reader(store, "decision", 1, width=36)
        for read in (lambda: r.read_range(0, 10), lambda: r.read_range(0, r.n_rows), lambda: r.block(2),
                     lambda: r.read_rows(np.arange(0, r.n_rows, 7)), lambda: r.read_rows(np.array([3])),
                     lambda: r.read_chunk_into(0, np.empty((r.chunk_rows, 36), np.uint16))):
            with pytest.raises(CorruptStoreError, match=r"block \d+ .*of acts/decision/1 in .* decodes to \d+ bytes"):
                read()


def test_absent_block_inside_committed_rows_is_corrupt(tmp_path: Path) -> None:
    """A chunk whose index marks a block holding committed rows absent reads as CorruptStoreError, not zeros."""
    path = tmp_path / "s.zarr"
    write_store(path, n_samples=30, layers=(1,))
    chunk = path / "acts" / "decision" / "1" / "c" / "0" / "0"
    blob = bytearray(chunk.read_bytes())
    n_blocks = 4  # chunk_rows 64 / block_rows 16
    index = np.frombuffer(bytes(blob[-(16 * n_blocks + 4):-4]), dtype="<u8").reshape(n_blocks, 2).copy()
    index[1] = 2**64 - 1
    blob[-(16 * n_blocks + 4):] = index.tobytes() + crc32c(index.tobytes())
    chunk.write_bytes(bytes(blob))
    with ActStore.open(path, cache_bytes=0) as store:
        view = store[1, "decision"]
        for read in (lambda: view[20], lambda: view[:], lambda: view[np.array([0, 17, 40, 90, 150])]):
            with pytest.raises(CorruptStoreError, match=r"block 1 .*of acts/decision/1 .*is absent"):
                read()
        assert view[0:16].shape == (16, 32)  # block 0 is intact
