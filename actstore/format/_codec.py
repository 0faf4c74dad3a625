"""Block codecs and the shard layout (zarr v3 ``sharding_indexed``, index at the end, crc32c everywhere).

A *chunk* (zarr's shard) holds ``chunk_rows`` rows as ``chunk_rows // block_rows`` independently compressed
*blocks*. Each encoded block is ``codec(bytes) + crc32c``; the chunk ends with an index of (offset, nbytes) uint64
pairs per block plus the index's own crc32c. This is exactly what zarr-python and tensorstore read for an array
whose codecs are ``[sharding_indexed(chunk_shape=[block_rows, d], codecs=[bytes, blosc, crc32c])]``.
"""

from __future__ import annotations

import ctypes
from typing import Any

import crc32c as _crc
import numcodecs
import numpy as np

from .._errors import CorruptStoreError
from . import _bytesplit

__all__ = ["CODECS", "BlockCodec", "crc32c", "crc32c_of", "join_shard", "shard_parts", "split_shard"]

Buffer = bytes | bytearray | memoryview

_MISSING = np.uint64(2**64 - 1)
_BLOSC = {
    "lz4": {"cname": "lz4", "clevel": 9, "shuffle": "bitshuffle"},
    "zstd": {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"},
    "bytesplit": {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"},  # the frame blosc decodes; see _bytesplit
}
_SHUFFLE_IDS = {"shuffle": numcodecs.Blosc.SHUFFLE, "bitshuffle": numcodecs.Blosc.BITSHUFFLE}
CODECS: tuple[str, ...] = (*_BLOSC, "none")
"""Every codec name: the one registry (blosc settings above, plus ``none``, raw bytes)."""


def crc32c(data: Buffer | np.ndarray, *, hold_gil: bool = False) -> bytes:
    """The crc32c of ``data`` as 4 little-endian bytes; ``hold_gil`` keeps the GIL (see :meth:`BlockCodec.decode`)."""
    return _crc.crc32c(data, 0, 0 if hold_gil else -1).to_bytes(4, "little")


def crc32c_of(rows: np.ndarray) -> int:
    """The crc32c of an array's raw bytes (C order), as an int: what block sums and row-statistics checksums hold."""
    return int.from_bytes(crc32c(np.ascontiguousarray(rows).reshape(-1).view(np.uint8)), "little")


def _blosc_holding_gil() -> Any:
    """c-blosc's ``blosc_decompress_ctx`` from numcodecs' own extension, called through ``ctypes.PyDLL`` (which,
    unlike ``CDLL``, keeps the GIL); None where the symbol is not exported."""
    try:
        fn = ctypes.PyDLL(numcodecs.blosc.__file__).blosc_decompress_ctx  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_DECOMPRESS_HOLDING_GIL = _blosc_holding_gil()
_MEMMOVE = ctypes.PyDLL(None).memmove
"""libc's ``memmove`` through ``ctypes.PyDLL``: a copy that keeps the GIL (``ctypes.memmove`` releases it)."""
_MEMMOVE.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_MEMMOVE.restype = ctypes.c_void_p


class BlockCodec:
    """Encodes one block of rows to bytes and decodes it back into a caller's buffer."""

    def __init__(self, name: str, dtype: np.dtype, *, checksum: bool = True, block_bytes: int | None = None) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)
        self.checksum = checksum
        spec = _BLOSC.get(name)
        # zstd finds far more redundancy when blosc hands it the whole block at once (measured: MiniLM bf16 1.27x
        # with blosc's automatic split vs 1.38x+ whole); lz4 keeps blosc's cache-sized split, which is faster.
        # bytesplit frames are one blosc block per actstore block.
        self.blocksize = block_bytes if (name in ("zstd", "bytesplit") and block_bytes) else 0
        self._blosc = (
            None
            if spec is None
            else numcodecs.Blosc(
                cname=spec["cname"], clevel=spec["clevel"], shuffle=_SHUFFLE_IDS[spec["shuffle"]],
                blocksize=self.blocksize,
            )
        )

    def encode_parts(self, block: np.ndarray) -> list[Buffer]:
        """The encoded block as buffers to write back to back (no copy of uncompressed data)."""
        raw = np.ascontiguousarray(block)
        body: Buffer
        if self._blosc is None:
            body = memoryview(raw).cast("B")
        elif self.name == "bytesplit" and _bytesplit.splittable(raw):
            body = _bytesplit.encode(raw)
        else:
            body = self._blosc.encode(raw)
        return [body, crc32c(body)] if self.checksum else [body]

    def encode(self, block: np.ndarray) -> bytes:
        return b"".join(self.encode_parts(block))

    def decode(self, data: bytes | memoryview, out: np.ndarray, *, where: str = "block", hold_gil: bool = False) -> None:
        """Decode ``data`` into ``out`` (C-contiguous, exactly one block), verifying the checksum and that the block
        decodes to exactly ``out.nbytes`` (rows x width x itemsize): a block of another size (a wrong width or dtype
        in the metadata, a block of another array) is a :class:`CorruptStoreError`, never a partly filled ``out``.

        ``hold_gil``: decode without releasing the GIL (one blosc thread). For the small reads of one block, where
        giving the GIL up costs more than the decode: while another Python thread is busy, a thread that releases
        the GIL waits up to the interpreter's switch interval (5 ms) to get it back."""
        view = memoryview(data)
        if self.checksum:
            if len(view) < 4 or crc32c(view[:-4], hold_gil=hold_gil) != bytes(view[-4:]):
                raise CorruptStoreError(f"checksum mismatch in {where}: the stored bytes are corrupt or truncated")
            view = view[:-4]
        size = len(view) if self._blosc is None else _blosc_sizes(view, where)
        if size != out.nbytes:
            raise CorruptStoreError(
                f"{where} decodes to {size} bytes, but a block of its array is {out.nbytes} bytes ({out.shape[0]} "
                f"rows x {out.nbytes // max(1, out.shape[0])} bytes): the metadata (width, dtype) or the block is wrong"
            )
        try:
            if self._blosc is None:
                if hold_gil and not view.readonly and out.flags.c_contiguous:  # numpy's copy would release the GIL
                    _MEMMOVE(out.ctypes.data, ctypes.addressof((ctypes.c_char * len(view)).from_buffer(view)), len(view))
                else:
                    out.reshape(-1).view(np.uint8)[:] = np.frombuffer(view, dtype=np.uint8)
            elif hold_gil and _DECOMPRESS_HOLDING_GIL is not None and out.flags.c_contiguous:
                got = _DECOMPRESS_HOLDING_GIL(bytes(view), out.ctypes.data, out.nbytes, 1)
                if got != out.nbytes:
                    raise ValueError(f"blosc_decompress_ctx returned {got}")
            else:
                self._blosc.decode(view, out=out)
        except Exception as exc:  # noqa: BLE001 - a codec error means the bytes are bad
            raise CorruptStoreError(f"cannot decode {where}: {exc}") from exc

    def zarr_codecs(self) -> list[dict[str, Any]]:
        """The inner codec chain as zarr v3 JSON."""
        chain: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}}]
        spec = _BLOSC.get(self.name)
        if spec is not None:
            chain.append(
                {
                    "name": "blosc",
                    "configuration": {**spec, "typesize": self.dtype.itemsize, "blocksize": self.blocksize},
                }
            )
        if self.checksum:
            chain.append({"name": "crc32c"})
        return chain

    def hdf5_filter(self) -> dict[str, Any]:
        """h5py ``create_dataset`` keywords for the same compression (the blosc filter of hdf5plugin)."""
        spec = _BLOSC.get(self.name)
        if spec is None:
            return {}
        import hdf5plugin

        shuffle = {"shuffle": hdf5plugin.Blosc.SHUFFLE, "bitshuffle": hdf5plugin.Blosc.BITSHUFFLE}[spec["shuffle"]]
        return dict(hdf5plugin.Blosc(cname=spec["cname"], clevel=spec["clevel"], shuffle=shuffle))


def _blosc_sizes(view: memoryview, where: str) -> int:
    """The decoded size a blosc frame declares (bytes 4-8 of its 16-byte header), checked against the frame's own
    length (bytes 12-16), so that nothing is decoded whose size is not known first."""
    if len(view) < 16:
        raise CorruptStoreError(f"cannot decode {where}: {len(view)} bytes, shorter than a blosc header")
    nbytes = int.from_bytes(view[4:8], "little")
    cbytes = int.from_bytes(view[12:16], "little")
    if cbytes != len(view):
        raise CorruptStoreError(f"cannot decode {where}: its blosc header says {cbytes} bytes, the block holds {len(view)}")
    return nbytes


def shard_parts(blocks: list[list[Buffer] | bytes | None]) -> list[Buffer]:
    """The buffers of a chunk: encoded blocks (each a list of parts or bytes; ``None`` = absent), then the index."""
    index = np.full((len(blocks), 2), _MISSING, dtype="<u8")
    parts: list[Buffer] = []
    offset = 0
    for i, blob in enumerate(blocks):
        if blob is None:
            continue
        pieces = [blob] if isinstance(blob, (bytes, bytearray, memoryview)) else blob
        size = sum(memoryview(p).nbytes for p in pieces)
        index[i] = (offset, size)
        parts.extend(pieces)
        offset += size
    index_bytes = index.tobytes()
    parts.append(index_bytes)
    parts.append(crc32c(index_bytes))
    return parts


def join_shard(blocks: list[list[Buffer] | bytes | None]) -> bytes:
    """Concatenate encoded blocks (``None`` = absent) and append the shard index."""
    return b"".join(shard_parts(blocks))


def index_size(n_blocks: int) -> int:
    """Bytes of a chunk's trailing index (entries plus its crc32c)."""
    return 16 * n_blocks + 4


def parse_index(tail: bytes | memoryview, n_blocks: int, data_len: int, *, where: str) -> list[tuple[int, int] | None]:
    """(offset, nbytes) of each block from a chunk's trailing index; ``None`` where a block is absent."""
    view = memoryview(tail)
    if len(view) != index_size(n_blocks):
        raise CorruptStoreError(f"{where} is truncated: its index should be {index_size(n_blocks)} bytes")
    if crc32c(view[:-4]) != bytes(view[-4:]):
        raise CorruptStoreError(f"checksum mismatch in the index of {where}: the chunk is corrupt or truncated")
    index = np.frombuffer(view[:-4], dtype="<u8").reshape(n_blocks, 2)
    out: list[tuple[int, int] | None] = []
    for i, (off, nbytes) in enumerate(index):
        if off == _MISSING and nbytes == _MISSING:
            out.append(None)
            continue
        if int(off) + int(nbytes) > data_len:
            raise CorruptStoreError(f"block {i} of {where} points past the end of the data ({off}+{nbytes} > {data_len})")
        out.append((int(off), int(nbytes)))
    return out


def split_shard(data: bytes | memoryview, n_blocks: int, *, where: str) -> list[memoryview | None]:
    """Inverse of :func:`join_shard`: views of each encoded block (``None`` where absent)."""
    view = memoryview(data)
    size = index_size(n_blocks)
    if len(view) < size:
        raise CorruptStoreError(f"{where} is truncated: {len(view)} bytes, shorter than its {size}-byte index")
    limit = len(view) - size
    entries = parse_index(view[limit:], n_blocks, limit, where=where)
    return [None if e is None else view[e[0] : e[0] + e[1]] for e in entries]
