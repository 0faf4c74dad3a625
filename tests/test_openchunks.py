"""Chunk files kept open for small reads (actstore/storage/_openchunks.py): the LRU, the GIL-keeping pread, and a
store's readers using it only for chunks that no longer change."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import actstore
from actstore.storage._openchunks import OPEN_CHUNKS, OpenChunks, pread_holding_gil


def test_pread_holding_gil_reads_what_os_pread_reads(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    data = np.random.default_rng(0).integers(0, 256, size=10_000, dtype=np.uint8).tobytes()
    f.write_bytes(data)
    fd = os.open(f, os.O_RDONLY)
    try:
        for n, off in ((100, 0), (4096, 1234), (500, 9_800), (0, 5), (10, 20_000)):
            assert bytes(pread_holding_gil(fd, n, off)) == os.pread(fd, n, off)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        pread_holding_gil(fd, 10, 0)  # closed descriptor


def test_the_lru_closes_what_it_evicts_and_drops(tmp_path: Path) -> None:
    cache = OpenChunks()
    cache.MAX = 3
    files = []
    for i in range(6):
        (tmp_path / f"{i}").write_bytes(b"x")
        files.append(os.open(tmp_path / f"{i}", os.O_RDONLY))  # all open first: no number is reused below
    ino = [os.fstat(fd).st_ino for fd in files]

    def still_open(i: int) -> bool:  # the descriptor is open and still this file
        try:
            return os.fstat(files[i]).st_ino == ino[i]
        except OSError:
            return False

    for i in range(5):
        assert cache.put(("s", f"{i}"), files[i], [])[0] == files[i]
    assert [still_open(i) for i in range(5)] == [False, False, True, True, True]  # the two oldest were closed
    os.close(files[5])
    again = os.open(tmp_path / "4", os.O_RDONLY)
    assert cache.put(("s", "4"), again, [])[0] == files[4]  # a second open of one file: the first is kept ...
    with pytest.raises(OSError):
        os.fstat(again)  # ... and the second closed
    assert cache.get(("s", "2")) is not None
    cache.drop(("s", "3"))
    assert not still_open(3) and cache.get(("s", "3")) is None
    cache.drop_store("s")
    assert not still_open(2) and not still_open(4)


def test_a_stores_small_reads_keep_full_chunks_open_only(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    a = torch.arange(200 * 4, dtype=torch.float32).reshape(200, 4)
    rows = {"sample": np.arange(200), "step": np.zeros(200, int), "position": np.zeros(200, int)}
    with actstore.create(path, chunk_rows=64, block_rows=16) as w:  # chunks 0-2 full, chunk 3 holds 8 rows
        w.append("r", rows=rows, acts={0: a})
    store = actstore.open(path, cache_bytes=0)
    view = store[0, "r"]
    for i in (5, 70, 130, 199):
        assert torch.equal(view[i], a[i])
    kept = {rel for (root, rel) in list(OPEN_CHUNKS._lru) if root == str(path)}
    assert kept == {"acts/r/0/c/0/0", "acts/r/0/c/1/0", "acts/r/0/c/2/0"}  # not the partly filled chunk 3
    store.close()
    assert not any(root == str(path) for root, _ in OPEN_CHUNKS._lru)


def test_a_forked_child_starts_with_no_kept_files(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    with actstore.create(path, chunk_rows=16, block_rows=8) as w:
        w.append("r", rows={"sample": np.arange(40), "step": np.zeros(40, int), "position": np.zeros(40, int)},
                 acts={0: torch.ones(40, 2)})
    store = actstore.open(path, cache_bytes=0)
    store[0, "r"][3]
    assert OPEN_CHUNKS._lru
    r, w_ = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: its copies were closed, and reads still work
        ok = not OPEN_CHUNKS._lru and torch.equal(store[0, "r"][20], torch.ones(2))
        os.write(w_, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"
    assert OPEN_CHUNKS._lru and torch.equal(store[0, "r"][3], torch.ones(2))  # the parent's files stay open
    store.close()


def test_row_statistics_are_never_read_from_kept_files(tmp_path: Path) -> None:
    """A full chunk of ``rowstats/{role}`` still changes (its last row follows the row table's filling chunk), so
    only schema arrays' chunks are kept open: a kept stats file would be read stale next to a live writer."""
    path = tmp_path / "s.zarr"
    with actstore.create(path, chunk_rows=4, block_rows=2) as w:  # 10 row-table chunks: 3 stats chunks, 2 full
        w.append("r", rows={"sample": np.arange(40), "step": np.arange(40) % 3, "position": np.zeros(40, int)},
                 acts={0: torch.ones(40, 2)})
    with actstore.open(path, cache_bytes=0) as store:
        sel = store.select(0, "r", step=[1])
        assert np.array_equal(sel.row_index, np.flatnonzero(np.arange(40) % 3 == 1))
        store[0, "r"][5]
        kept = [rel for root, rel in OPEN_CHUNKS._lru if root == str(path)]
        assert kept and not [rel for rel in kept if not rel.startswith(("acts/", "rows/", "cond/", "samples/"))]
