"""``LoaderConfig``: how the loader cuts a store into training batches (validated without I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._errors import ConfigError
from ..format._format import DTYPES

__all__ = ["LoaderConfig", "loader_config"]


@dataclass(frozen=True)
class LoaderConfig:
    """How :class:`ActLoader` / :class:`ActDataset` cut a store into batches."""

    batch_size: int = 4096
    """Rows per batch."""
    shuffle: bool = True
    """Shuffle (chunk order, then rows within a buffer); False yields the stored order exactly."""
    seed: int = 0
    """Seed of the shuffle; the order depends only on (seed, epoch, rank, world_size, worker count)."""
    shuffle_chunks: int = 8
    """Chunks per shuffle buffer (see the module docstring for the trade-off)."""
    drop_last: bool = False
    """Drop each rank's last short batch; with several ranks, also how uneven row counts are equalised."""
    rank: int | None = None
    """This process's rank (None: from ``torch.distributed`` when initialised, else 0)."""
    world_size: int | None = None
    """Number of ranks (None: from ``torch.distributed`` when initialised, else 1)."""
    dtype: str | None = None
    """Output dtype, ``"bfloat16"``, ``"float16"``, ``"float32"`` or ``"float64"`` (None: as stored)."""
    with_rows: bool = False
    """Yield ``(acts, rows)`` where ``rows`` holds the row-table columns (sample, step, position, ...) of the batch."""
    pin_memory: bool = False
    """Put batches in pinned host memory (faster, asynchronous copies to a GPU)."""
    device: str | None = None
    """Move batches to this device (e.g. ``"cuda"``) on a side stream, ahead of the consumer."""
    prefetch: int = 2
    """Batches prepared ahead of the consumer."""
    reuse_buffers: bool = False
    """False (the default): every yielded host batch is a tensor of its own, safe to keep (``list(loader)``
    works). True: zero-copy opt-in for training loops that use each batch at once (ActLoader only): batches come
    from a ring of ``prefetch + 3`` reused output buffers, so a yielded host batch is **overwritten**
    ``prefetch + 2`` batches later (``.clone()`` what you keep); ``benchmarks/bench_loader.py`` prints what it
    saves. Batches moved to ``device`` are always fresh device tensors (the host ring is used for them either way)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "shuffle_chunks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.prefetch, int) or self.prefetch < 1:
            raise ConfigError(f"prefetch must be an int >= 1, got {self.prefetch!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative int, got {self.seed!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; valid dtypes are {list(DTYPES)} or None (as stored)")
        if self.world_size is not None and (not isinstance(self.world_size, int) or self.world_size < 1):
            raise ConfigError(f"world_size must be an int >= 1, got {self.world_size!r}")
        if self.rank is not None:
            ws = self.world_size if self.world_size is not None else 1
            if not isinstance(self.rank, int) or not 0 <= self.rank < ws:
                raise ConfigError(f"rank must be an int in [0, {ws}) for world_size={ws}, got {self.rank!r}")
        if self.pin_memory and self.device is not None and not str(self.device).startswith("cuda"):
            raise ConfigError(f"pin_memory only helps a copy to a cuda device, got device={self.device!r}")

    def ranks(self) -> tuple[int, int]:
        """``(rank, world_size)``, filled in from ``torch.distributed`` where not given."""
        import torch.distributed as dist

        ready = dist.is_available() and dist.is_initialized()
        world = self.world_size if self.world_size is not None else (dist.get_world_size() if ready else 1)
        rank = self.rank if self.rank is not None else (dist.get_rank() if ready else 0)
        if not 0 <= rank < world:
            raise ConfigError(f"rank {rank} is outside world_size {world}")
        return rank, world


def loader_config(config: LoaderConfig | None, options: dict[str, Any], unknown: dict[str, Any]) -> LoaderConfig:
    """The config of ``store.loader(...)``: a whole ``config``, or the keyword ``options`` (the fields of
    :class:`LoaderConfig`), never both; an ``unknown`` keyword is a :class:`ConfigError` naming the valid ones."""
    if unknown:
        valid = ["layer", "role", "step", "sample", "where", "match", *options, "config"]
        raise ConfigError(f"unknown loader option {sorted(unknown)[0]!r}; valid options are {valid}")
    defaults = LoaderConfig()
    changed = sorted(k for k, v in options.items() if v != getattr(defaults, k))
    if config is not None and changed:
        raise ConfigError(f"give loader options either as config= or as keywords, not both (got config and {changed})")
    return config if config is not None else LoaderConfig(**options)
