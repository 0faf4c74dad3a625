"""Hostile store files are refused before they cost anything: FIFOs, devices, symlinks leaving the store, huge and
sparse files, directories where files belong. Every case is a typed actstore error naming the path, never a hang
(each test has a timeout), never a large allocation; ``verify`` reports each and never raises."""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_store

import actstore
from actstore import ActStore, ActStoreError, CorruptStoreError
from actstore.tools._verify import verify

pytestmark = pytest.mark.timeout(30)

CHUNK = Path("acts/decision/6/c/0/0")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "good.zarr"
    write_store(path, n_samples=6, steps=2)
    return path


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "s.zarr"
    shutil.copytree(pristine, dst)
    return dst


def _read_all(path: Path) -> None:
    with ActStore.open(path, cache_bytes=0) as s:
        for role in s.roles:
            for layer in s.layers_of(role):
                s[layer, role][:]


def _refused(path: Path, match: str) -> None:
    """Open-and-read and verify both refuse, naming what matched; verify returns a report."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ActStoreError, match=match):
        _read_all(path)
    report = verify(path)
    assert not report.ok and any(match.split(".*")[0] in str(p) for p in report.problems), report.render()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 512 << 10  # KiB: nothing big was read


def test_fifo_as_root_zarr_json(store: Path) -> None:
    (store / "zarr.json").unlink()
    os.mkfifo(store / "zarr.json")
    _refused(store, "zarr.json is a FIFO")
    with pytest.raises(ActStoreError, match="FIFO"):
        actstore.create(store, resume=True)


def test_fifo_as_chunk(store: Path) -> None:
    (store / CHUNK).unlink()
    os.mkfifo(store / CHUNK)
    _refused(store, "c/0/0 is a FIFO")


def test_fifo_as_array_zarr_json(store: Path) -> None:
    (store / "acts/decision/6/zarr.json").unlink()
    os.mkfifo(store / "acts/decision/6/zarr.json")
    report = verify(store)
    assert any("is a FIFO" in str(p) or "not a regular file" in str(p) for p in report.problems), report.render()


@pytest.mark.parametrize("target", ["/dev/zero", "/etc/passwd", "outside"])
def test_chunk_symlinked_anywhere(store: Path, tmp_path: Path, target: str) -> None:
    if target == "outside":
        target = str(tmp_path / "outside")
        shutil.copy(store / CHUNK, target)  # even a valid chunk is refused through a link
    (store / CHUNK).unlink()
    os.symlink(target, store / CHUNK)
    _refused(store, "c/0/0 is a symbolic link")


def test_symlinked_directory_leaving_the_store(store: Path, tmp_path: Path) -> None:
    shutil.move(store / "acts/decision/6/c", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", store / "acts/decision/6/c")
    _refused(store, "outside the store")


def test_symlink_loop(store: Path) -> None:
    (store / CHUNK).unlink()
    os.symlink(store / CHUNK, store / CHUNK)
    _refused(store, "symbolic link")


def test_directory_as_chunk(store: Path) -> None:
    (store / CHUNK).unlink()
    (store / CHUNK).mkdir()
    _refused(store, "c/0/0 is a directory")


def test_huge_root_zarr_json_refused_by_size_unread(store: Path) -> None:
    with open(store / "zarr.json", "r+b") as f:
        f.truncate(2 << 30)  # sparse: 2 GiB that would be read whole before the size check
    _refused(store, r"zarr.json is 2147483648 bytes, more than")


def test_huge_array_zarr_json_refused_unread(store: Path) -> None:
    with open(store / "acts/decision/6/zarr.json", "r+b") as f:
        f.truncate(2 << 30)
    report = verify(store)
    assert any("2147483648 bytes, more than" in str(p) for p in report.problems), report.render()


def test_sparse_6gb_chunk_refused_unread(store: Path) -> None:
    blob = (store / CHUNK).read_bytes()
    with open(store / CHUNK, "r+b") as f:
        f.truncate(6 << 30)
        f.seek((6 << 30) - len(blob))
        f.write(blob)  # the real chunk at the end: a valid index pointing 6 GB back
    _refused(store, "c/0/0 is 6442450944 bytes, more than")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of their mode")
def test_unreadable_chunk(store: Path) -> None:
    (store / CHUNK).chmod(0)
    _refused(store, "permission denied")


def test_commit_of_2_40_rows_is_typed(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit record claiming 2^40 rows (checksums can be recomputed by whoever forges it): a typed error, not a
    MemoryError, and nothing allocated."""
    from actstore.format._codec import BlockCodec
    from actstore.read._blocks import ArrayReader, BlockCache

    with ActStore.open(store) as s:
        be = s.backend  # the reader a forged record would make
        layout = s.meta["layout"]
        r = ArrayReader(be, "rows/decision", 3, np.dtype("<i8"), BlockCodec(layout["codec"], np.dtype("<i8")),
                        layout["chunk_rows"], layout["block_rows"], 2**40, BlockCache(0))
        with pytest.raises(CorruptStoreError, match=r"1099511627776 rows"):
            r.read_range(0, r.n_rows)


def test_healthy_store_still_verifies(store: Path) -> None:
    assert verify(store).ok
