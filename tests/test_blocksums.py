"""Block sums (actstore/read/_blocksums.py): every block bound to its array and position, checked on every read path.

The references are independent of the reader: the numpy arrays a store was written from, the chunk files' bytes as
split by the shard layout, and plain zarr-python for the block-sums arrays.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_store

import actstore
from actstore import ActStore
from actstore._errors import CorruptStoreError
from actstore.format._codec import crc32c, split_shard
from actstore.format._format import seal_metadata
from actstore.format._record import Record
from actstore.read._blocksums import ENTRIES, sums_key
from actstore.storage._zarr import ZarrDirBackend
from actstore.tools._verify import verify

ACTS = "acts/decision/6"


def _rows(lo: int, hi: int) -> dict[str, np.ndarray]:
    return {"sample": np.arange(lo, hi), "step": np.zeros(hi - lo, int), "position": np.zeros(hi - lo, int)}


def _chunk_file(path: Path, key: str, chunk: int) -> Path:
    return path / key / "c" / str(chunk) / "0"


def _blocks(path: Path, key: str, chunk: int, per_chunk: int) -> list[bytes]:
    data = _chunk_file(path, key, chunk).read_bytes()
    return [bytes(b) for b in split_shard(data, per_chunk, where="test") if b is not None]


def _swap_blocks(path: Path, key: str, chunk: int, per_chunk: int, a: int, b: int) -> None:
    """Exchange two stored blocks of one chunk file in place, index untouched (both still pass their crc32c)."""
    f = _chunk_file(path, key, chunk)
    data = bytearray(f.read_bytes())
    offsets = []
    off = 0
    for blob in _blocks(path, key, chunk, per_chunk):
        offsets.append((off, len(blob)))
        off += len(blob)
    (oa, na), (ob, nb) = offsets[a], offsets[b]
    assert na == nb, "the test needs blocks of one size"
    data[oa : oa + na], data[ob : ob + nb] = data[ob : ob + nb], data[oa : oa + na]
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_entries_are_the_blocks_crcs_and_plain_zarr_reads_them(tmp_path: Path, codec: str) -> None:
    import zarr

    path = tmp_path / "s.zarr"
    write_store(path, n_samples=9, codec=codec)  # 9 x 4 steps x 5 = 180 decision rows: 2 full chunks + 52 rows
    with ActStore.open(path) as store:
        assert store.meta["layout"]["blocksums"] == "crc32c"
        n = len(store[6, "decision"])
    br, per_chunk = 16, 4
    sums = np.asarray(zarr.open_array(str(path / sums_key(ACTS)), mode="r")[:])
    assert sums.shape == (-(-n // br), 2) and sums.dtype == np.uint32
    blocks = [blob for c in range(-(-n // 64)) for blob in _blocks(path, ACTS, c, per_chunk)]
    for b in range(n // br):  # full blocks: the crc32c of the encoded bytes, i.e. each block's own trailing crc
        assert sums[b, 1] == br and sums[b, 0] == int.from_bytes(blocks[b][-4:], "little")
    tail = n % br  # the last block: its committed rows' raw bytes
    ref = ActStore.open(path)[6, "decision"].numpy(np.arange(n - tail, n))
    assert sums[-1, 1] == tail and sums[-1, 0] == int.from_bytes(crc32c(ref.view(np.uint8)), "little")


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_swapped_blocks_inside_a_chunk_are_an_error_on_every_read_path(tmp_path: Path, codec: str) -> None:
    path = tmp_path / "s.zarr"
    n, key = 150, "acts/r/0"
    r = torch.from_numpy(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    a = torch.cat([r * (-1) ** b for b in range(n // 16 + 1)])[:n]  # blocks r, -r, r...: one stored size
    with actstore.create(path, chunk_rows=64, block_rows=16, codec=codec) as w:
        w.append("r", rows=_rows(0, n), acts={0: a})
    sizes = [len(b) for b in _blocks(path, key, 0, 4)]
    assert sizes[1] == sizes[2], sizes
    _swap_blocks(path, key, 0, 4, 1, 2)
    with ActStore.open(path, cache_bytes=0) as store:
        view = store[0, "r"]
        reads = {"whole": lambda: view[:], "range": lambda: view[16:40], "one row": lambda: view[19],
                 "fancy": lambda: view.numpy(np.arange(0, 64, 5))}
        for what, read in reads.items():
            with pytest.raises(CorruptStoreError, match=rf"block 1 \(chunk 0\) of {key}.*blocksums") as err:
                read()
            assert "swapped, replaced or damaged" in str(err.value), what
        assert torch.equal(view[64:150], a[64:150]) and torch.equal(view[0:16], a[:16])
    report = verify(path)
    assert not report.ok and [(p.array, p.chunk) for p in report.problems] == [(key, 0)], report.render()


def test_a_chunk_replaced_by_another_of_the_same_size_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    write_store(path, n_samples=9, codec="none", layers=(6, 10))
    src, dst = _chunk_file(path, "acts/decision/10", 1), _chunk_file(path, ACTS, 1)
    assert src.stat().st_size == dst.stat().st_size
    shutil.copyfile(src, dst)  # a valid chunk of another array: every crc32c in it passes
    with ActStore.open(path) as store, pytest.raises(CorruptStoreError, match=rf"chunk 1\) of {ACTS}"):
        store[6, "decision"][64:128]
    problems = verify(path).problems
    assert [(p.array, p.chunk) for p in problems] == [(ACTS, 1)], problems


@pytest.mark.parametrize("damage", ["delete", "flip"])
def test_damaged_block_sums_are_an_error_naming_them(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "s.zarr"
    write_store(path, n_samples=9)
    f = _chunk_file(path, sums_key(ACTS), 0)
    if damage == "delete":
        f.unlink()
    else:
        data = bytearray(f.read_bytes())
        data[5] ^= 4  # inside the first entry: the sums block's own crc32c fails
        f.write_bytes(bytes(data))
    with ActStore.open(path) as store:
        with pytest.raises(CorruptStoreError, match=f"chunk 0 of {sums_key(ACTS)}"):
            store[6, "decision"][:]
        assert len(store[10, "decision"][:]) == len(store[6, "decision"])  # other arrays unaffected
    problems = verify(path).problems
    assert any(p.array == sums_key(ACTS) and p.chunk == 0 for p in problems), problems


def test_resume_keeps_the_stored_bytes_of_full_blocks(tmp_path: Path) -> None:
    """A resumed writer reuses the stored bytes of the full blocks of its partial chunk instead of encoding them
    again (another blosc could encode them differently, and their block sums are final)."""
    path = tmp_path / "s.zarr"
    a = torch.randn(100, 8)
    rows = _rows
    with actstore.create(path, chunk_rows=64, block_rows=16, codec="zstd") as w:
        w.append("r", rows=rows(0, 90), acts={0: a[:90]})  # chunk 1: blocks 0 (full), 1 (10 rows)
    before = _blocks(path, "acts/r/0", 1, 4)
    with actstore.create(path, resume=True) as w:
        w.append("r", rows=rows(90, 100), acts={0: a[90:]})
    after = _blocks(path, "acts/r/0", 1, 4)
    assert after[0] == before[0] and after[1] != before[1]
    with ActStore.open(path) as store:
        assert torch.equal(store[0, "r"][:], a)
    assert verify(path).ok


def _committed(path: Path) -> bool:
    """Whether the store's record holds a commit of role ``r`` yet."""
    if not (path / "zarr.json").exists():
        return False
    with ActStore.open(path) as store:
        return "r" in store.roles


def test_a_commit_behind_the_buffered_chunk_reads_its_last_block_back(tmp_path: Path, monkeypatch) -> None:
    """The commit's last block lies in a chunk the writer has already filled and handed off: its entry is computed
    from the block read back from disk."""
    import actstore.write._write_thread as wt

    calls: list[int] = []
    real = wt.read_rows
    monkeypatch.setattr(wt, "read_rows", lambda be, arr, start, count: (calls.append(start), real(be, arr, start, count))[1])
    path = tmp_path / "s.zarr"
    a = torch.randn(200, 8)
    rows = _rows
    with actstore.create(path, chunk_rows=16, block_rows=4, autocommit=False, commit_interval_s=0.5) as w:
        w.append("r", rows=rows(0, 6), acts={0: a[:6]})
        w.commit({"batches": 1})  # a mark at 6 rows, committed when the interval has passed ...
        w.append("r", rows=rows(6, 200), acts={0: a[6:]})  # ... after chunks 0-11 have filled and gone
        deadline = time.monotonic() + 30
        while not _committed(path) and time.monotonic() < deadline:  # the block sums are written before the record
            time.sleep(0.05)
        with ActStore.open(path) as store:
            assert torch.equal(store[0, "r"][:], a[:6])
        w.commit({"batches": 2})
    assert 4 in calls  # the last committed block (rows 4-5) was read back
    with ActStore.open(path) as store:
        assert torch.equal(store[0, "r"][:], a) and store.commit["progress"] == {"batches": 2}
    assert verify(path).ok


def test_live_readers_never_see_a_false_mismatch(tmp_path: Path) -> None:
    """A reader next to a writer that keeps completing partly filled blocks (small blocks, a commit per append):
    every read of the committed rows is right and none raises."""
    path = tmp_path / "s.zarr"
    d, total = 8, 1200  # about 400 commits, each completing or starting a block while the reader reads
    a = np.random.default_rng(0).standard_normal((total, d)).astype(np.float32)
    rows = _rows
    errors: list[BaseException] = []
    reads = 0
    w = actstore.create(path, chunk_rows=32, block_rows=8, commit_interval_s=0, codec="none")
    w.append("r", rows=rows(0, 1), acts={0: a[:1]})
    w.flush()
    done = threading.Event()

    def write() -> None:
        try:
            i = 1
            rng = np.random.default_rng(1)
            while i < total:
                n = int(rng.integers(1, 6))
                w.append("r", rows=rows(i, min(total, i + n)), acts={0: a[i : i + n]})
                i += n
            w.close()
        finally:
            done.set()

    t = threading.Thread(target=write)
    t.start()
    with ActStore.open(path, cache_bytes=0) as store:
        while not done.is_set() or reads < 5:
            try:
                store.refresh()
                view = store[0, "r"]
                n = len(view)
                got = view.numpy(np.arange(max(0, n - 20), n)) if n else None
                if n:
                    np.testing.assert_array_equal(got, a[max(0, n - 20) : n])
                    np.testing.assert_array_equal(view.numpy(np.array([n - 1])), a[n - 1 : n])
                reads += 1
                time.sleep(0.002)  # leave the writer the GIL between reads (the test needs commits racing reads, not a spin)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)
                break
    t.join()
    assert not errors, errors[0]
    assert reads > 5
    assert verify(path).ok


def test_a_store_without_block_sums_is_read_and_resumed_without_them(tmp_path: Path) -> None:
    """Stores written before block sums (format version 2) have none: read as before; a resume adds none."""
    path = tmp_path / "s.zarr"
    truth = write_store(path, n_samples=6)
    be = ZarrDirBackend(path)
    meta = Record.parse(be.read_meta(), str(path)).to_json()
    del meta["layout"]["blocksums"]
    meta["format_version"] = 2
    doc = seal_metadata(meta)
    doc["format_version"] = 2  # as an older actstore wrote it
    from actstore.format._format import record_checksum

    doc["checksum"] = record_checksum({k: v for k, v in doc.items() if k != "checksum"})
    be.write_meta(doc, durable=False)
    shutil.rmtree(path / "blocksums")
    with ActStore.open(path) as store:
        assert "blocksums" not in store.meta["layout"]
        np.testing.assert_array_equal(store[6, "decision"][:].view(torch.uint16).numpy(),
                                      truth.acts[("decision", 6)].view(torch.uint16).numpy())
    assert verify(path).ok
    with actstore.create(path, resume=True) as w:
        w.append("decision", rows={"sample": np.zeros(3, int), "step": np.zeros(3, int), "position": np.arange(3)},
                 acts={6: torch.zeros(3, 32, dtype=torch.bfloat16), 10: torch.zeros(3, 32, dtype=torch.bfloat16)})
    assert not (path / "blocksums").exists() and verify(path).ok


def test_entries_span_several_sums_chunks(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    n = ENTRIES * 2 + 5  # one-row blocks: 2053 entries in 3 sums chunks, written over several commits
    a = torch.arange(n * 2, dtype=torch.float32).reshape(n, 2)
    rows = _rows
    with actstore.create(path, chunk_rows=8, block_rows=1, commit_interval_s=0, codec="none") as w:
        for lo in range(0, n, 700):
            w.append("r", rows=rows(lo, min(n, lo + 700)), acts={0: a[lo : lo + 700]})
    with actstore.create(path, resume=True) as w:  # a resumed writer continues the last sums chunk from disk
        w.append("r", rows=rows(n, n + 3), acts={0: torch.ones(3, 2)})
    with ActStore.open(path) as store:
        assert torch.equal(store[0, "r"][:n], a)
    assert verify(path).ok
    assert len(list((path / sums_key("acts/r/0") / "c").iterdir())) == 3
