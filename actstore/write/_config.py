"""Writer configuration: a frozen dataclass validated without I/O."""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import ConfigError
from ..format._codec import CODECS

__all__ = ["CODECS", "NONFINITE", "StoreConfig"]

"""Codec names: ``lz4`` = blosc lz4 + bitshuffle (the default, fast), ``bytesplit`` = sign/exponent bytes
entropy-coded, mantissa bytes raw, in a standard blosc frame (5-15% smaller than lz4 at about its speed),
``zstd`` = blosc zstd(1) + byte shuffle (archives, smaller and about 2x the CPU), ``none`` = raw bytes (fastest,
largest). Every codec adds a crc32c."""


NONFINITE: tuple[str, ...] = ("count", "reject", "allow")


@dataclass(frozen=True)
class StoreConfig:
    """How a :class:`~actstore.StoreWriter` lays out and writes a store."""

    codec: str = "lz4"
    """Block codec, one of ``CODECS``."""
    chunk_rows: int = 4096
    """Rows per chunk (one file / object per array, the unit the writer writes and the loader shuffles)."""
    block_rows: int | None = None
    """Rows per compressed block inside a chunk (the unit a random read decodes); divides ``chunk_rows``.
    None: 256 for ``lz4`` / ``none`` (a random row decodes 1 MiB at d=2048 bf16), 1024 for ``zstd`` (whose ratio
    grows with the block: MiniLM bf16 1.38x at 256 rows, 1.5x at 1024)."""
    queue_bytes: int = 1 << 30
    """Bytes the append queue may hold before ``append`` blocks the producer (backpressure)."""
    commit_interval_s: float = 5.0
    """A commit mark becomes durable within this many seconds (0 = every mark is written at once)."""
    autocommit: bool = True
    """Every ``append*`` call is its own commit mark; set False and call ``commit()`` per batch for transactions."""
    durable: bool = False
    """fsync every data file before the commit record that makes it visible (slower; survives power loss)."""
    threads: int = 0
    """Threads that compress and write chunks (0 = one per CPU core)."""
    direct_io: bool = False
    """Write chunk files with ``O_DIRECT`` (local Zarr stores on Linux), past the page cache: faster where new
    page-cache memory is slow (a fresh virtual machine: 0.3-0.6 GB/s buffered against the disk's bandwidth), slower
    where the page cache is fast and the disk is not, and readers then read from the disk. A filesystem that refuses
    it (tmpfs) is written as usual, with a ``RuntimeWarning``."""
    max_prompt_bytes: int = 1024
    """Width of the per-sample UTF-8 prompt column; longer prompts are refused."""
    nonfinite: str = "count"
    """NaN/Inf activations: ``count`` (stored, counted in the commit record, warned about on close), ``reject``
    (the append raises before anything is queued; costs a pass over the data on the caller's thread) or
    ``allow`` (not checked)."""

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}; valid codecs are {list(CODECS)}")
        for name in ("chunk_rows", "block_rows", "queue_bytes", "max_prompt_bytes"):
            value = getattr(self, name)
            if name == "block_rows" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.chunk_rows % self.blocks:
            raise ConfigError(f"block_rows={self.blocks} must divide chunk_rows={self.chunk_rows}")
        if self.nonfinite not in NONFINITE:
            raise ConfigError(f"unknown nonfinite policy {self.nonfinite!r}; valid policies are {list(NONFINITE)}")
        if self.commit_interval_s < 0:
            raise ConfigError(f"commit_interval_s must be >= 0, got {self.commit_interval_s!r}")
        if not isinstance(self.direct_io, bool):
            raise ConfigError(f"direct_io must be a bool, got {self.direct_io!r}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ConfigError(f"threads must be an int >= 0, got {self.threads!r}")

    @property
    def blocks(self) -> int:
        """The effective ``block_rows`` (the codec's default when None)."""
        if self.block_rows is not None:
            return self.block_rows
        return min(1024 if self.codec == "zstd" else 256, self.chunk_rows)
