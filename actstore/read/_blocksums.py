"""Block sums: each stored block's checksum, kept apart from the block and indexed by its position.

A Zarr block carries its own crc32c, and a chunk's index its own, but nothing there says *where* a block belongs:
two blocks of equal size swapped inside a chunk, or a chunk file replaced by another of the same size, pass every
crc and read as the wrong rows. The block sums bind each block to its array and position: for every array of the
schema, ``blocksums/{array key}`` holds one entry per block, ``(crc32c, rows)`` as little-endian uint32:

- a block whose rows are all committed: ``rows == block_rows`` and the crc32c of its encoded bytes, which is the
  block's own trailing crc32c (checking it costs a comparison of 4 bytes);
- the last, partly committed block of an array: ``rows`` = its committed rows and the crc32c of those rows' raw
  bytes (decoded), which stays true while a live writer fills the rest of the block.

The writer writes the entries of every changed block at each commit, after the blocks and before the commit record
(:class:`BlockSumsWriter`); a reader checks every block it decodes against its entry (:class:`BlockSums`). A reader
reads the entry, if it has not yet, after the block: a writer may have completed the block and written its new
entry in between, so a mismatch is confirmed by reading the entry, then the block, again before it is reported.
Stores written before (``layout.blocksums`` absent) have none and are read as before. See ``docs/format.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .._errors import CorruptStoreError
from ..format._codec import BlockCodec, crc32c_of

if TYPE_CHECKING:
    from ..storage._storage import Backend


class ChunkState(Protocol):
    """What the writer side needs of an array's chunk state (``write._chunks.ChunkBuffer``)."""

    buf: np.ndarray | None
    n_rows: int
    chunk_rows: int
    block_crcs: dict[int, int]


__all__ = ["ENTRIES", "KIND", "BlockSums", "BlockSumsWriter", "has_sums", "sums_key"]

KIND = "crc32c"
"""``layout.blocksums`` of a store that has block sums."""
ENTRIES = 1024
"""Entries per chunk (and block) of a block-sums array."""
_U4 = np.dtype("<u4")
_CODEC = BlockCodec("none", _U4)

ReadBack = Callable[[Any, int, int], np.ndarray]
"""``read_back(array, start, count)``: committed rows that the writer's chunk buffer no longer holds."""


def sums_key(key: str) -> str:
    """Where the block sums of array ``key`` live."""
    return f"blocksums/{key}"


def has_sums(key: str) -> bool:
    """Whether array ``key`` is one of the schema's (activations, row tables, conds, samples), which have block
    sums in a store that keeps them; derived arrays (row statistics, feature passes) have none."""
    return key.split("/", 1)[0] in ("acts", "rows", "cond", "samples")


def _read_sums_chunk(be: Backend, key: str, chunk: int) -> np.ndarray:
    where = f"chunk {chunk} of {sums_key(key)} in {be.path}"
    blob = be.read_chunk(sums_key(key), chunk, 1)[0]
    if blob is None:
        raise CorruptStoreError(f"{where} has no block although committed blocks' sums lie in it")
    out = np.empty((ENTRIES, 2), dtype=_U4)
    _CODEC.decode(blob, out, where=where)
    return out


class BlockSums:
    """The reader's side for one array at one commit: check each decoded block against its entry."""

    def __init__(self, be: Backend, key: str, block_rows: int, n_rows: int) -> None:
        self._be = be
        self._key = key
        self._block_rows = block_rows
        self._n_rows = n_rows
        self._chunks: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _entry(self, block: int, *, fresh: bool) -> tuple[int, int]:
        chunk, i = divmod(block, ENTRIES)
        sums = None if fresh else self._chunks.get(chunk)
        if sums is None:
            sums = _read_sums_chunk(self._be, self._key, chunk)
            with self._lock:
                self._chunks[chunk] = sums
        return int(sums[i, 0]), int(sums[i, 1])

    def matches(self, block: int, trailing_crc: bytes | None, out: np.ndarray, *, fresh: bool = False) -> bool:
        """Whether decoded block ``block`` (``out``, encoded bytes ending in ``trailing_crc``) is the one its entry
        names. ``fresh`` reads the entry again instead of using the one cached."""
        crc, rows = self._entry(block, fresh=fresh)
        committed = min(self._block_rows, self._n_rows - block * self._block_rows)
        if not committed <= rows <= self._block_rows:
            return False  # no entry (0 rows), or one that covers fewer rows than are committed
        if rows == self._block_rows:
            return trailing_crc is not None and crc == int.from_bytes(trailing_crc, "little")
        return crc == crc32c_of(out[:rows])

    def mismatch(self, block: int, where: str) -> CorruptStoreError:
        crc, rows = self._entry(block, fresh=False)
        return CorruptStoreError(
            f"{where} is not the block stored at this position: its checksum differs from its entry in "
            f"{sums_key(self._key)} (crc32c {crc:#010x} over {rows} rows); the block was swapped, replaced or "
            "damaged, or the block sums were"
        )


class BlockSumsWriter:
    """The writer thread's side: at each commit, the entries of every block that changed since the last one."""

    def __init__(self, be: Backend, block_rows: int, committed: dict[str, int]) -> None:
        self._be = be
        self._block_rows = block_rows
        self._final: dict[str, int] = {key: n // block_rows for key, n in committed.items()}
        """Per array: blocks whose entries are final (all rows committed), i.e. the first entry still to write."""
        self._created: set[str] = {key for key, n in committed.items() if n}
        self._last: dict[str, tuple[int, np.ndarray]] = {}
        """Per array: the last sums chunk written (its index and entries), reused by the next commit."""

    def flush(self, arrays: dict[str, ChunkState], counts: dict[str, int], read_back: ReadBack) -> None:
        """Write the entries of ``arrays`` at their committed row ``counts``; every block is on disk already.
        ``read_back(array, start, count)`` reads rows of a partly committed block that the chunk buffer no longer
        holds."""
        br = self._block_rows
        for key, n in counts.items():
            first, full = self._final.get(key, 0), n // br
            if n == 0 or (first == full and n % br == 0):
                continue
            array = arrays[key]
            entries: dict[int, tuple[int, int]] = {}
            for b in range(first, full):
                crc = array.block_crcs.pop(b, None)
                if crc is None:
                    raise CorruptStoreError(f"internal error: block {b} of {key} was committed but never encoded")
                entries[b] = (crc, br)
            if n % br:
                entries[full] = (crc32c_of(self._tail_rows(array, full * br, n, read_back)), n % br)
            self._write(key, entries)
            self._be.set_rows(sums_key(key), -(-n // br))
            self._final[key] = full

    def rewind(self, key: str, n_rows: int) -> None:
        """A rollback to ``n_rows`` rows (it may reach below a flushed commit): later blocks' entries get written
        again at the next commit, from the blocks as they are then."""
        self._final[key] = min(self._final.get(key, 0), n_rows // self._block_rows)

    @staticmethod
    def _tail_rows(array: ChunkState, start: int, stop: int, read_back: ReadBack) -> np.ndarray:
        if array.buf is not None and array.n_rows // array.chunk_rows == start // array.chunk_rows:
            lo = start % array.chunk_rows
            return array.buf[lo : lo + stop - start]
        return read_back(array, start, stop - start)  # a chunk that filled up after the committed rows

    def _write(self, key: str, entries: dict[int, tuple[int, int]]) -> None:
        skey = sums_key(key)
        if key not in self._created:
            self._be.create_array(skey, 2, _U4, _CODEC, ENTRIES, ENTRIES)
            self._created.add(key)
        for chunk in sorted({b // ENTRIES for b in entries}):
            last = self._last.get(key)
            if last is not None and last[0] == chunk:
                sums = last[1]
            elif min(entries) > chunk * ENTRIES:  # a resumed store: the chunk's earlier entries are on disk
                sums = _read_sums_chunk(self._be, key, chunk).copy()
            else:
                sums = np.zeros((ENTRIES, 2), dtype=_U4)
            for b, entry in entries.items():
                if b // ENTRIES == chunk:
                    sums[b % ENTRIES] = entry
            self._be.write_chunk(skey, chunk, [_CODEC.encode_parts(sums)], durable=False)
            self._last[key] = (chunk, sums)
