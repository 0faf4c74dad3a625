"""Training minibatches from a store: ``ActLoader`` (threads, the fast path) and ``ActDataset`` (for a DataLoader).

Both follow the plan of :mod:`actstore.train._shuffle`: a random order of whole chunks, then rows shuffled within a
buffer of ``shuffle_chunks`` chunks. Both hand the plan to :mod:`actstore.train._pipeline`, which decodes whole chunks
concurrently into one of two reused buffers while the batches of the other are gathered (double buffering) on a
background thread. This module holds the user-facing side: options, the selected rows, epochs and resume state.

**Shuffle buffer trade-off.** Rows of one batch come from at most ``shuffle_chunks`` chunks (about
``shuffle_chunks * chunk_rows`` consecutive rows of capture). Rows captured together (same sample, same denoising
step) are correlated, so a small buffer gives batches that over-represent a few samples; a larger buffer mixes
better but costs ``2 * shuffle_chunks * chunk_rows * d * itemsize`` bytes of RAM per layer (256 MiB at the default
8 chunks of 4096 rows, d=2048 bf16) and a longer first-batch latency. Throughput is the same for any
``shuffle_chunks >= 2``. For a store whose samples span fewer rows than a chunk, 8 chunks hold rows of many
samples; ``tests/test_shuffle.py`` measures how far the within-batch same-sample fraction is from a uniform
permutation's.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .._errors import ConfigError, StoreClosedError
from ..format._format import dtype_name
from ..read._blocks import ArrayReader
from ..read._rowindex import Selection
from ._loader_config import LoaderConfig
from ._pipeline import Batch, Inputs, Work, batches, decode_sets
from ._shuffle import EpochPlan, plan_epoch, resume_split

if TYPE_CHECKING:
    from ..read._reader import ActStore

__all__ = ["ActDataset", "ActLoader", "LoaderConfig"]

_STATE_KEYS = ("seed", "shuffle", "batch_size", "shuffle_chunks", "drop_last", "n_rows")


class _Source:
    """The selected rows of one role and the readers of its layers; reopens the store in a new process."""

    def __init__(
        self,
        store: ActStore,
        layer: int | str | Sequence[int | str],
        role: str,
        step: int | Iterable[int] | None,
        sample: int | Iterable[int] | None,
        where: Callable[[dict[str, np.ndarray]], np.ndarray] | np.ndarray | None,
        match: Mapping[str, int | Iterable[int]] | None = None,
    ) -> None:
        self.multi = isinstance(layer, (list, tuple))
        layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
        if not layers:
            raise ConfigError(f"give at least one layer; layers of role {role!r} are {store.layers_of(role)}")
        self.role = role
        first = store.select(layers[0], role, step=step, sample=sample, where=where, match=match)
        views = [first] + [store.view(x, role) for x in layers[1:]]  # the filter runs once, for every layer
        self.layers = [v.layer for v in views]
        if len(set(map(str, self.layers))) != len(self.layers):
            raise ConfigError(f"layer list {layers!r} names a layer twice")
        sel = first.selection
        self.selection: Selection = sel if sel is not None else Selection.all(store.index(role).bounds)
        """The selected rows, chunk by chunk (O(chunks) memory; no row table is loaded)."""
        self.dtype_names = [dtype_name(v.dtype) for v in views]
        self.path = str(store.path)
        self.storage_options = store.storage_options
        self._store: ActStore | None = store
        self._pid = os.getpid()
        self._readers: list[ArrayReader] | None = [v.reader for v in views]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None
        state["_readers"] = None
        return state

    @property
    def store(self) -> ActStore:
        if self._store is not None and self._pid == os.getpid():
            self._store.check_open()
        if self._store is None or self._pid != os.getpid():
            from ..read._reader import ActStore

            self._store = ActStore.open(self.path, storage_options=self.storage_options)
            self._readers = None
            self._pid = os.getpid()
        return self._store

    @property
    def readers(self) -> list[ArrayReader]:
        store = self.store
        if self._readers is None:
            self._readers = [store.view(x, self.role).reader for x in self.layers]
        return self._readers

    @property
    def chunk_rows(self) -> int:
        return self.readers[0].chunk_rows

    @property
    def row_reader(self) -> Any:
        """The reader of the role's row table (decoded buffer by buffer, like the activations)."""
        return self.store.index(self.role).reader

    @property
    def columns(self) -> list[str]:
        return self.store.index(self.role).columns

    def inputs(self, with_rows: bool) -> Inputs:
        """What an iteration reads (opens the store again in a new process); with the row table if ``with_rows``."""
        return Inputs(
            layers=tuple(self.layers),
            readers=tuple(self.readers),
            dtype_names=tuple(self.dtype_names),
            multi=self.multi,
            row_reader=self.row_reader if with_rows else None,
            columns=tuple(self.columns) if with_rows else (),
        )


def _config(config: LoaderConfig | None, overrides: dict[str, Any]) -> LoaderConfig:
    base = config or LoaderConfig()
    if not overrides:
        return base
    valid = set(LoaderConfig.__dataclass_fields__)
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ConfigError(
            f"unknown loader option {bad[0]!r}; valid options are {sorted(valid)} and step, sample, where, config"
        )
    return LoaderConfig(**{**asdict(base), **overrides})


class _Base:
    def __init__(
        self,
        store: ActStore,
        layer: int | str | Sequence[int | str],
        role: str,
        *,
        step: int | Iterable[int] | None = None,
        sample: int | Iterable[int] | None = None,
        where: Callable[[dict[str, np.ndarray]], np.ndarray] | np.ndarray | None = None,
        match: Mapping[str, int | Iterable[int]] | None = None,
        config: LoaderConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.config = _config(config, overrides)
        self._src = _Source(store, layer, role, step, sample, where, match)
        self.rank, self.world_size = self.config.ranks()
        self.epoch = 0

    @property
    def num_rows(self) -> int:
        """Rows selected (before the split across ranks)."""
        return self._src.selection.total

    @property
    def layers(self) -> list[int | str]:
        return list(self._src.layers)

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """This rank's plan of an epoch (default: the current one)."""
        return plan_epoch(self._src.selection, self.config, chunk_rows=self._src.chunk_rows,
                          epoch=self.epoch if epoch is None else epoch, rank=self.rank, world_size=self.world_size)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        n = self.num_rows
        if self.world_size > 1:
            n = n // self.world_size if self.config.drop_last else -(-n // self.world_size)
        b = self.config.batch_size
        return n // b if self.config.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def _state(self, batch: int) -> dict[str, Any]:
        c = self.config
        return {
            "epoch": self.epoch,
            "batch": batch,
            "rank": self.rank,
            "world_size": self.world_size,
            "n_rows": self.num_rows,
            **{k: getattr(c, k) for k in _STATE_KEYS if k != "n_rows"},
        }

    def _check_state(self, state: dict[str, Any]) -> tuple[int, int]:
        mine = self._state(0)
        for key in (*_STATE_KEYS, "rank", "world_size"):
            if key in state and state[key] != mine[key]:
                raise ConfigError(
                    f"cannot resume: the saved state has {key}={state[key]!r} but this loader has {key}={mine[key]!r}"
                )
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if not 0 <= batch <= len(self):
            raise ConfigError(f"cannot resume at batch {batch}: an epoch has {len(self)} batches")
        return epoch, batch


class ActLoader(_Base):
    """Batches of ``store[layer, role]`` (or several layers, same rows in the same order), for training.

    ``for batch in loader`` yields the rest of the current epoch, then moves to the next epoch. A batch is a
    ``(B, d)`` tensor, a dict ``{layer: (B, d)}`` when ``layer`` is a list, or ``(acts, rows)`` with
    ``with_rows=True`` (``rows``: dict of int64 tensors, one per row-table column). Filters: ``step``,
    ``sample`` (values to keep) and ``where`` (a mask over the role's rows, or a callable on the row table).
    Options are the fields of :class:`LoaderConfig`, as ``config=`` or keywords. The order depends only on
    (seed, epoch, rank, world_size); ``state_dict()`` / ``load_state_dict()`` resume mid-epoch exactly.
    """

    def __init__(self, store: ActStore, layer: Any, role: str, **kwargs: Any) -> None:
        super().__init__(store, layer, role, **kwargs)
        self.batch = 0
        self._bufs: list[list[np.ndarray]] | None = None
        self._recyclers: list[dict[tuple[Any, ...], Any]] = []
        """Per layer, batch memory the caller let go of, handed out again in later epochs too."""
        self._pipes: weakref.WeakSet[Any] = weakref.WeakSet()
        self._closed = False
        store.register_loader(self)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.batch = 0

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: the epoch and the batches of it already yielded (plus the settings)."""
        return self._state(self.batch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next batch is the one that would have followed."""
        self.epoch, self.batch = self._check_state(state)

    def close(self) -> None:
        """Stop and join the background thread of any iteration in progress; iterating again raises
        :class:`~actstore.StoreClosedError`. Also done by ``with``, by ``store.close()``, when an iterator is
        garbage collected (that iteration only) and at interpreter exit."""
        self._closed = True
        for pipe in list(self._pipes):
            pipe.close()

    def __enter__(self) -> ActLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Batch]:
        if self._closed:
            raise StoreClosedError(f"this loader of {self._src.path} was closed; make a new one with store.loader(...)")
        plan = self.plan()
        if self._bufs is None or self._bufs[0][0].shape[0] < plan.buffer_rows:
            self._bufs = decode_sets(self._src.readers, plan.buffer_rows)
        return self._epoch(plan)

    def _epoch(self, plan: EpochPlan) -> Iterator[Batch]:
        work = Work(plan, tuple(range(plan.n_buffers)), skip=self.batch, reuse=self.config.reuse_buffers)
        # the decode buffers and recycled batch memory are the loader's, for one iteration at a time: an iteration
        # started while another is still running gets its own
        alone = not any(p.gi_frame is not None for p in self._pipes)
        pipe = batches(self._src.inputs(self.config.with_rows), self.config, work,
                       self._bufs if alone else None, self._recyclers if alone else None)
        self._pipes.add(pipe)
        try:
            for batch in pipe:
                self.batch += 1
                yield batch
        finally:
            pipe.close()
        if self._closed:
            raise StoreClosedError(f"this loader of {self._src.path} was closed during the epoch")
        self.epoch += 1
        self.batch = 0

    def __repr__(self) -> str:
        return (f"ActLoader(layers={self.layers}, role={self._src.role!r}, rows={self.num_rows}, "
                f"batches={len(self)}, epoch={self.epoch}, batch={self.batch})")


class ActDataset(_Base, IterableDataset):  # type: ignore[misc]
    """An ``IterableDataset`` of whole batches for your own ``DataLoader(ds, batch_size=None, num_workers=W)``.

    Same options and batch format as :class:`ActLoader`. Workers split the rank's shuffle buffers (worker ``w``
    of ``W`` takes buffers ``w, w + W, ...``), so no row is read twice; the DataLoader's round-robin fixes the
    order, which depends on (seed, epoch, rank, world_size, W). Call ``set_epoch(e)`` before each epoch (with
    ``persistent_workers=False``, the default). To resume, save ``state_dict(batches_seen)`` (batches drawn from
    the DataLoader this epoch) and call ``load_state_dict`` on a new dataset used with the same ``num_workers``.
    Batches are freshly allocated (tensors cross process boundaries); ``device`` is not supported here (use the
    DataLoader's ``pin_memory`` and move batches yourself).
    """

    def __init__(self, store: ActStore, layer: Any, role: str, **kwargs: Any) -> None:
        super().__init__(store, layer, role, **kwargs)
        if self.config.device is not None:
            raise ConfigError(f"ActDataset does not move batches to a device (got device={self.config.device!r}); "
                              "use ActLoader, or move them in the training loop")
        self._resume: tuple[int, int] | None = None

    def state_dict(self, batches_seen: int) -> dict[str, Any]:
        """The state after ``batches_seen`` batches of the current epoch came out of the DataLoader."""
        return self._state(batches_seen)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration of the saved epoch yields the batches after the saved ones, in order."""
        self.epoch, batch = self._check_state(state)
        self._resume = (self.epoch, batch)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        plan = self.plan()
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skips, roles = resume_split(plan.batch_counts(), n_workers, self._resume[1])
            if worker >= len(roles):
                return
            worker = roles[worker]
            skip = int(skips[worker])
        work = Work(plan, tuple(range(worker, plan.n_buffers, n_workers)), skip=skip)
        yield from batches(self._src.inputs(self.config.with_rows), self.config, work)
