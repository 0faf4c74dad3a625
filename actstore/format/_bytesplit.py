"""The ``bytesplit`` encoder: a block split into byte planes, the sign/exponent planes entropy-coded, written as a
standard blosc frame so that every blosc decoder (numcodecs, zarr-python, tensorstore, the HDF5 blosc filter) reads
it without actstore.

A float's high byte holds its sign and (most of) its exponent: few distinct values, about 3 bits of entropy in
activations. Its low bytes are mantissa, close to random. blosc's byte shuffle already separates them (plane ``j``
holds byte ``j`` of every value) and its format lets each plane of a block be compressed on its own ("split"
blocks, with a plane whose compressed size equals its raw size stored raw). What blosc cannot do is choose per
plane: its zstd codec runs match finding over every plane (slow to decode, and it compresses noise for nothing).
This encoder writes the frame itself:

- planes in the upper half of each value's bytes (bf16/fp16: the high byte; float32: the top two) are compressed
  with zstd at *literals-only* settings (Huffman-coded bytes, no match search to speak of), kept only where that
  saves at least ``_MIN_SAVING``; every other plane is stored raw (a ``memcpy`` to decode);
- the header says ``zstd``, ``shuffle``, typesize = itemsize, one blosc block per actstore block.

The blosc 1.x frame (what ``blosc_decompress`` reads): a 16-byte header (format version 2, zstd format version 1,
flags = byte shuffle | zstd << 5 with the don't-split bit clear, typesize, nbytes, blocksize, cbytes, all
little-endian), one int32 block start per block, then per block and plane an int32 size followed by the plane's
bytes (size == the plane's raw size: stored raw). A decoder splits a block into ``typesize`` planes only when the
block holds at least 128 values, so smaller blocks, and 1-byte dtypes, take blosc's own zstd encoder instead.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import numpy as np

__all__ = ["MIN_VALUES", "encode", "split", "splittable"]

MIN_VALUES = 128
"""Fewest values per block for a split frame (blosc's ``MIN_BUFFERSIZE``: below it decoders read one plane)."""
_MIN_SAVING = 0.9
"""A plane is stored compressed only when that takes at most this fraction of its raw size (decode speed)."""
_BLOSC_FORMAT, _ZSTD_FORMAT = 2, 1
_FLAGS = 0x1 | (4 << 5)  # byte shuffle, split planes allowed, compressor code 4 (zstd)
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_local = threading.local()


def _compressor() -> Any:
    """This thread's zstd compressor at literals-only settings (zstandard objects are not thread-safe)."""
    comp = getattr(_local, "zstd", None)
    if comp is None:
        import zstandard

        params = zstandard.ZstdCompressionParameters(
            strategy=zstandard.STRATEGY_FAST, min_match=7, window_log=17, hash_log=6, search_log=1,
            target_length=0, write_content_size=1, write_checksum=0,
        )
        comp = _local.zstd = zstandard.ZstdCompressor(compression_params=params)
    return comp


def split(block: np.ndarray) -> list[np.ndarray]:
    """Byte plane ``j`` (byte ``j``, little-endian, of every value) for each ``j``, each contiguous: the last one
    holds each value's most significant byte (a float's sign and high exponent bits)."""
    size = block.dtype.itemsize
    bits = np.ascontiguousarray(block).reshape(-1).view(_UINT[size])
    # a shift and a truncating cast per plane: several times faster than numpy's strided byte gather
    return [bits.astype(np.uint8) if j == 0 else (bits >> (8 * j)).astype(np.uint8) for j in range(size)]


def splittable(block: np.ndarray) -> bool:
    """Whether ``block`` is written as a split frame (else blosc's own encoder takes it)."""
    return block.dtype.itemsize in _UINT and block.size >= MIN_VALUES and block.nbytes < 2**31 - 1024


def encode(block: np.ndarray) -> bytes:
    """``block`` (C-contiguous values of 2, 4 or 8 bytes, at least :data:`MIN_VALUES`: :func:`splittable`) as one
    blosc frame."""
    planes = split(block)
    size, nbytes = block.dtype.itemsize, block.nbytes
    comp = _compressor()
    body: list[bytes | memoryview] = []
    for j, plane in enumerate(planes):
        raw = memoryview(plane).cast("B")
        data: bytes | memoryview = raw
        if 2 * j >= size:  # sign / exponent planes
            packed = comp.compress(raw)
            if len(packed) <= _MIN_SAVING * len(raw):
                data = packed
        body.append(struct.pack("<i", len(data)))
        body.append(data)
    start = 16 + 4  # header, one block start
    total = start + sum(len(b) for b in body)
    header = struct.pack("<BBBBiiii", _BLOSC_FORMAT, _ZSTD_FORMAT, _FLAGS, size, nbytes, nbytes, total, start)
    return b"".join([header, *body])
