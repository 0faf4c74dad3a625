"""Block codecs and the shard layout: round trips, checksums, and zarr-python reading what we write."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import actstore
from actstore import CorruptStoreError
from actstore.format._codec import BlockCodec, join_shard, split_shard


@pytest.mark.parametrize("codec", actstore.CODECS)
@pytest.mark.parametrize("dtype", ["<u2", "<f4", "<i8", "u1"])
def test_block_roundtrip(codec: str, dtype: str) -> None:
    rng = np.random.default_rng(0)
    block = (rng.standard_normal((16, 24)) * 100).astype(dtype)
    c = BlockCodec(codec, np.dtype(dtype))
    out = np.empty_like(block)
    c.decode(c.encode(block), out)
    np.testing.assert_array_equal(out, block)


@pytest.mark.parametrize("codec", actstore.CODECS)
def test_flipped_byte_is_caught(codec: str) -> None:
    block = np.arange(16 * 8, dtype="<u2").reshape(16, 8)
    c = BlockCodec(codec, block.dtype)
    blob = bytearray(c.encode(block))
    blob[len(blob) // 2] ^= 0x40
    with pytest.raises(CorruptStoreError, match="checksum mismatch in block 3"):
        c.decode(bytes(blob), np.empty_like(block), where="block 3")
    with pytest.raises(CorruptStoreError):
        c.decode(bytes(blob[:3]), np.empty_like(block))


def test_shard_join_split_and_corruption() -> None:
    blocks = [b"abc", None, b"defgh"]
    data = join_shard(blocks)
    got = split_shard(data, 3, where="chunk 0")
    assert [None if g is None else bytes(g) for g in got] == blocks
    with pytest.raises(CorruptStoreError, match="index"):
        split_shard(data[:-1] + bytes([data[-1] ^ 1]), 3, where="chunk 0")
    with pytest.raises(CorruptStoreError, match="truncated"):
        split_shard(data[:10], 3, where="chunk 0")


@pytest.mark.parametrize("codec", actstore.CODECS)
def test_zarr_python_reads_our_arrays(tmp_path, codec: str) -> None:
    """The store is plain Zarr v3: zarr-python opens our sharded, checksummed arrays and reads the same bits."""
    import torch

    a = torch.randn(300, 12).to(torch.bfloat16)
    with actstore.create(tmp_path / "s.zarr", codec=codec, chunk_rows=64, block_rows=16) as w:
        w.append("r", rows={"sample": np.arange(300), "step": np.zeros(300, int), "position": np.zeros(300, int)}, acts={3: a})
    z = zarr.open_array(tmp_path / "s.zarr" / "acts" / "r" / "3", mode="r")
    assert z.shape == (300, 12)
    np.testing.assert_array_equal(z[:], a.view(torch.uint16).numpy())
    group = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert group.attrs["actstore"]["commit"]["roles"]["r"] == 300


@pytest.mark.parametrize("codec", actstore.CODECS)
@pytest.mark.parametrize("shape", [(16, 9), (16, 7), (20, 8), (12, 8)])
def test_a_block_of_another_size_is_refused_not_partly_decoded(codec: str, shape: tuple[int, int]) -> None:
    """A (16, 8) block decoded into an ``out`` of another size (a width or row count the metadata got wrong) is a
    CorruptStoreError naming the block; ``out`` is never partly filled and returned."""
    block = np.arange(16 * 8, dtype="<u2").reshape(16, 8)
    c = BlockCodec(codec, block.dtype)
    out = np.empty(shape, dtype=block.dtype)
    with pytest.raises(CorruptStoreError, match=r"block 3 of acts/x decodes to 256 bytes, but a block of its array is"):
        c.decode(c.encode(block), out, where="block 3 of acts/x")


def test_a_blosc_frame_whose_header_lies_about_its_length_is_refused() -> None:
    block = np.arange(16 * 8, dtype="<u2").reshape(16, 8)
    c = BlockCodec("lz4", block.dtype, checksum=False)
    blob = c.encode(block)
    with pytest.raises(CorruptStoreError, match="blosc header"):
        c.decode(blob + b"\0" * 8, np.empty_like(block))
    with pytest.raises(CorruptStoreError, match="shorter than a blosc header"):
        c.decode(blob[:10], np.empty_like(block))


@pytest.mark.parametrize("name", ["lz4", "zstd"])
def test_decode_holding_the_gil_equals_the_pool_decode(name: str) -> None:
    """Small reads decode through c-blosc's ``blosc_decompress_ctx`` with the GIL held (numcodecs' own extension,
    via ctypes.PyDLL): same bytes as numcodecs' decode, and a damaged frame is still a CorruptStoreError."""
    from actstore.format import _codec

    assert _codec._DECOMPRESS_HOLDING_GIL is not None  # exported by numcodecs' blosc extension here
    rows = (np.random.default_rng(3).standard_normal((256, 96), dtype=np.float32).view(np.uint32) >> 16).astype("<u2")
    codec = BlockCodec(name, np.dtype("<u2"), block_bytes=rows.nbytes)
    blob = codec.encode(rows)
    a, b = np.empty_like(rows), np.empty_like(rows)
    codec.decode(blob, a)
    codec.decode(blob, b, hold_gil=True)
    assert np.array_equal(a, rows) and np.array_equal(b, rows)
    bad = bytearray(blob)
    bad[2] |= 0xE0  # the header's compressor code: one c-blosc does not know; crc32c recomputed: only blosc objects
    bad[-4:] = _codec.crc32c(bytes(bad[:-4]))
    with pytest.raises(CorruptStoreError, match="cannot decode"):
        codec.decode(bytes(bad), b, hold_gil=True)


def test_raw_decode_holding_the_gil_copies_exactly() -> None:
    """Codec none, small reads: the bytes read into a bytearray are copied with libc's memmove keeping the GIL."""
    rows = np.random.default_rng(4).integers(0, 2**16, size=(64, 40), dtype=np.uint16)
    codec = BlockCodec("none", np.dtype("<u2"))
    out = np.empty_like(rows)
    codec.decode(bytearray(codec.encode(rows)), out, hold_gil=True)  # writable: the memmove path
    assert np.array_equal(out, rows)
    with pytest.raises(CorruptStoreError, match="decodes to"):
        codec.decode(bytearray(codec.encode(rows[:63])), out, hold_gil=True)  # one row short: refused, not copied


def test_every_codec_choice_is_the_registry() -> None:
    """The CLIs spell the codec choices as ``Literal`` types (tyro needs them written out): they must be exactly
    the registry ``actstore.CODECS``."""
    import typing

    from actstore import __main__ as cli
    from capture import _cli_config

    assert typing.get_args(_cli_config.Codec) == actstore.CODECS
    spelled = [typing.get_args(hint)[0] for cls in vars(cli).values() if isinstance(cls, type)
               for name, hint in typing.get_type_hints(cls).items() if name == "codec"]
    assert spelled and all(typing.get_args(h) == actstore.CODECS for h in spelled)
