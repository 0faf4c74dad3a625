"""``StoreConfig.direct_io``: chunk files written with O_DIRECT hold exactly the bytes a buffered write would, and a
filesystem or backend that cannot do it is written as usual, with a warning, never with lost or wrong rows."""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import actstore
from actstore._errors import ConfigError
from actstore.storage import _direct

pytestmark = pytest.mark.skipif(not _direct.supported(), reason="no O_DIRECT on this platform")


def _write(path: Path, rng: np.random.Generator, *, n: int = 700, d: int = 24, **kw: object) -> np.ndarray:
    x = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32)).to(torch.bfloat16)
    with actstore.create(path, chunk_rows=256, block_rows=64, **kw) as w:
        for s in range(0, n, 100):
            r = np.arange(s, min(n, s + 100))
            w.append("r", rows={"sample": r, "step": np.zeros(r.size, np.int64), "position": r}, acts={0: x[r]})
    return x.view(torch.int16).numpy()


@pytest.mark.parametrize("sizes", [[1], [4095], [4096], [4097, 3], [5000, 0, 70000, 4]])
def test_write_file_holds_exactly_the_parts(tmp_path: Path, sizes: list[int]) -> None:
    rng = np.random.default_rng(len(sizes))
    parts = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    path = tmp_path / "f"
    if not _direct.write_file(path, parts, durable=True):
        assert not path.exists()  # refused (tmpfs): nothing left behind
        pytest.skip(f"the filesystem of {tmp_path} refuses O_DIRECT")
    assert path.read_bytes() == b"".join(parts)


def test_store_written_direct_reads_back_bit_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        want = _write(tmp_path / "d.zarr", rng, direct_io=True)
    refused = [w for w in caught if "O_DIRECT" in str(w.message)]
    with actstore.ActStore.open(tmp_path / "d.zarr") as store:
        got = store[0, "r"][:].view(torch.int16).numpy()
    np.testing.assert_array_equal(got, want)
    assert actstore.verify(tmp_path / "d.zarr").ok
    if not refused:  # the same bytes on disk as a buffered write of the same rows
        _write(tmp_path / "b.zarr", np.random.default_rng(0))
        for f in (tmp_path / "d.zarr" / "acts").rglob("c/*/*"):
            assert f.read_bytes() == (tmp_path / "b.zarr" / f.relative_to(tmp_path / "d.zarr")).read_bytes()


def test_a_refusing_filesystem_falls_back_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def refusing(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing)
    assert _direct.write_file(tmp_path / "f", [b"abc"], durable=False) is False
    assert not (tmp_path / "f").exists()
    with pytest.warns(RuntimeWarning, match="refuses O_DIRECT"):
        want = _write(tmp_path / "s.zarr", np.random.default_rng(1), direct_io=True)
    with actstore.ActStore.open(tmp_path / "s.zarr") as store:
        np.testing.assert_array_equal(store[0, "r"][:].view(torch.int16).numpy(), want)


def test_hdf5_cannot_and_says_so(tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="direct_io needs a local Zarr store"):
        want = _write(tmp_path / "s.h5", np.random.default_rng(2), direct_io=True)
    with actstore.ActStore.open(tmp_path / "s.h5") as store:
        np.testing.assert_array_equal(store[0, "r"][:].view(torch.int16).numpy(), want)


def test_direct_io_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="direct_io must be a bool"):
        actstore.create(tmp_path / "s.zarr", direct_io="yes")
