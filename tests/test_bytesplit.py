"""The ``bytesplit`` encoder: standard blosc frames (checked with numcodecs' and the HDF5 filter's own decoders), the
sign/exponent plane entropy-coded and the mantissa planes raw, smaller than lz4 + bitshuffle on activations."""

from __future__ import annotations

import copy
import struct
from pathlib import Path

import h5py
import numcodecs
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import actstore
from actstore import CorruptStoreError
from actstore.format import _bytesplit
from actstore.format._codec import BlockCodec
from actstore.format._format import record_checksum
from actstore.format._record import Record


def _activations(n: int, d: int, seed: int = 0) -> np.ndarray:
    """bf16 bits of residual-like rows: per-dimension scales over three orders of magnitude."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32) * np.exp(rng.normal(0, 1.2, d)).astype(np.float32)
    return torch.from_numpy(x).to(torch.bfloat16).view(torch.uint16).numpy()


def _planes_of(frame: bytes, size: int) -> list[int]:
    """The stored size of each plane of a one-block frame (int32 size fields after the header and block start)."""
    pos, sizes = 20, []
    for _ in range(size):
        (n,) = struct.unpack_from("<i", frame, pos)
        sizes.append(n)
        pos += 4 + n
    assert pos == len(frame)
    return sizes


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(["<u2", "<f2", "<f4", "<i8"]),
    n=st.integers(1, 700),
    scale=st.sampled_from([0.0, 1e-3, 1.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_frames_decode_with_plain_blosc(dtype: str, n: int, scale: float, seed: int) -> None:
    """Any values, any size: numcodecs' blosc (no actstore code) decodes the frame to the same bytes."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal(n) * scale
    block = raw.astype(dtype) if dtype != "<u2" else rng.integers(0, 1 << 16, n).astype(dtype)
    frame = BlockCodec("bytesplit", block.dtype, checksum=False, block_bytes=block.nbytes).encode(block)
    got = np.frombuffer(numcodecs.Blosc().decode(frame), dtype=block.dtype)
    np.testing.assert_array_equal(got.view(np.uint8), block.view(np.uint8))
    assert (frame[2] == 0x81) == _bytesplit.splittable(block)  # split frame, or blosc's own below 128 values


def test_sign_exponent_plane_is_coded_and_mantissa_raw() -> None:
    block = _activations(256, 64)
    frame = _bytesplit.encode(block)
    low, high = _planes_of(frame, 2)
    assert low == block.size  # stored raw: near-random mantissa bits
    assert high < 0.5 * block.size  # the sign/exponent plane: few distinct values
    # random bytes in every plane: nothing is worth coding, every plane is stored raw
    noise = np.random.default_rng(1).integers(0, 1 << 16, 4096).astype("<u2")
    assert _planes_of(_bytesplit.encode(noise), 2) == [4096, 4096]


def test_smaller_than_lz4_bitshuffle_on_activations() -> None:
    block = _activations(1024, 256)
    lz4 = BlockCodec("lz4", block.dtype, checksum=False).encode(block)
    split = BlockCodec("bytesplit", block.dtype, checksum=False, block_bytes=block.nbytes).encode(block)
    assert len(split) < 0.92 * len(lz4)


def test_damaged_frame_is_corruption() -> None:
    block = _activations(256, 64)
    codec = BlockCodec("bytesplit", block.dtype, block_bytes=block.nbytes)
    blob = bytearray(codec.encode(block))
    blob[30] ^= 0x10
    with pytest.raises(CorruptStoreError, match="checksum mismatch"):
        codec.decode(bytes(blob), np.empty_like(block))
    bare = BlockCodec("bytesplit", block.dtype, checksum=False, block_bytes=block.nbytes)
    frame = bytearray(bare.encode(block))
    frame[20:24] = struct.pack("<i", 7)  # a plane size that does not add up
    with pytest.raises(CorruptStoreError):
        bare.decode(bytes(frame), np.empty_like(block))


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_store_round_trip_and_independent_readers(tmp_path: Path, suffix: str) -> None:
    import hdf5plugin  # noqa: F401  (registers the blosc filter with h5py)
    import zarr

    bits = _activations(700, 96, seed=3)
    values = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
    path = tmp_path / f"s{suffix}"
    with actstore.create(path, codec="bytesplit", chunk_rows=256) as w:
        w.append("r", rows={"sample": np.arange(700), "step": np.zeros(700, int), "position": np.zeros(700, int)},
                 acts={3: values})
    with actstore.ActStore.open(path) as store:
        assert store.format_version == actstore.FORMAT_VERSION >= 4
        np.testing.assert_array_equal(store[3, "r"][:].view(torch.uint16).numpy(), bits)
    assert actstore.verify(path).ok
    if suffix == ".zarr":
        got = zarr.open_array(path / "acts" / "r" / "3", mode="r")[:]
    else:
        with h5py.File(path, "r") as f:
            got = next(ds for name, ds in _datasets(f) if name.endswith("/3"))[:]
    np.testing.assert_array_equal(np.asarray(got).view(np.uint16), bits)


def _datasets(f: h5py.File) -> list[tuple[str, h5py.Dataset]]:
    out: list[tuple[str, h5py.Dataset]] = []
    f.visititems(lambda name, obj: out.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_an_older_sealed_record_cannot_name_bytesplit(tmp_path: Path) -> None:
    with actstore.create(tmp_path / "s.zarr", codec="bytesplit") as w:
        w.append("r", rows={"sample": [0], "step": [0], "position": [0]}, acts={0: torch.zeros(1, 4)})
    with actstore.ActStore.open(tmp_path / "s.zarr") as store:
        meta = copy.deepcopy(store.record.seal())
    meta["format_version"] = 3  # as if an older actstore had sealed it
    meta["checksum"] = record_checksum(meta)
    with pytest.raises(CorruptStoreError, match="'bytesplit' is format_version 4 or later; the record says 3"):
        Record.parse(meta, "s.zarr")


def test_nonfinite_is_counted_in_bytesplit_stores(tmp_path: Path) -> None:
    """NaN/Inf in a bytesplit store are counted as in any other: the commit holds the same count as torch's."""
    x = torch.from_numpy(_activations(600, 64, seed=5).view(np.int16)).view(torch.bfloat16).clone()
    x[3, 7], x[299, 0], x[599, 63], x[450, 10] = float("nan"), float("inf"), -float("inf"), 3.0e38  # 3.0e38 finite
    with pytest.warns(RuntimeWarning, match=r"holds NaN/Inf activations: \{'acts/r/0': 3\}"), \
            actstore.create(tmp_path / "s.zarr", codec="bytesplit", chunk_rows=256) as w:
        w.append("r", rows={"sample": np.arange(600), "step": np.zeros(600, int), "position": np.zeros(600, int)},
                 acts={0: x})
    with actstore.ActStore.open(tmp_path / "s.zarr") as store:
        assert dict(store.record.commit.nonfinite) == {"acts/r/0": int((~torch.isfinite(x.float())).sum())} == {"acts/r/0": 3}


def test_verify_reports_a_damaged_bytesplit_block(tmp_path: Path) -> None:
    """``verify`` decodes every block of a bytesplit store: a flipped bit in the coded sign/exponent plane of one
    block is reported by array and chunk, and reading that block raises instead of returning numbers."""
    bits = _activations(512, 64, seed=9)
    path = tmp_path / "s.zarr"
    with actstore.create(path, codec="bytesplit", chunk_rows=256) as w:
        w.append("r", rows={"sample": np.arange(512), "step": np.zeros(512, int), "position": np.zeros(512, int)},
                 acts={0: torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)})
    assert actstore.verify(path).ok
    chunk = path / "acts" / "r" / "0" / "c" / "1" / "0"
    blob = bytearray(chunk.read_bytes())
    blob[20 + 4 + 256 * 64 + 4 + 40] ^= 0x08  # block 0: header, low-plane size + plane, high-plane size, into it
    chunk.write_bytes(bytes(blob))
    report = actstore.verify(path)
    assert not report.ok and ("acts/r/0", 1) in {(p.array, p.chunk) for p in report.problems}, report.render()
    with actstore.ActStore.open(path) as store, pytest.raises(CorruptStoreError, match="checksum mismatch"):
        store[0, "r"][256:300]
