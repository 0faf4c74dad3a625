"""``ActStore``: the read side. Opens a store read-only, trusts only its commit record, hands out lazy views."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import CorruptStoreError, StoreClosedError, StoreIndexError, UnknownKeyError
from ..format._format import (
    NO_STEP,
    SAMPLE_KEYS,
    acts_key,
    cond_acts_key,
    cond_rows_key,
    from_storage,
    rows_key,
)
from ..format._record import CondSpec, LayerSpec, Record, RoleSpec, thaw
from ..storage._backend import Backend, detect_backend, open_backend
from ..storage._parts import merge_records, open_parts
from ._blocks import ArrayReader, BlockCache, ConcatReader, open_array
from ._rowindex import RowIndex, RowTable
from ._stats import CheckedStats, stats_key
from ._view import ActView

if TYPE_CHECKING:
    import torch

    from ..train._loader import ActLoader
    from ..train._loader_config import LoaderConfig

__all__ = ["ActStore", "RowTable", "open_store"]

RowFilter = Callable[[dict[str, np.ndarray]], np.ndarray]


class ActStore:
    """A read-only view of a store. ``ActStore.open(path)``; index with ``store[layer, role]`` or
    ``store[layer, role, step]``."""

    def __init__(self, backend: Backend, *, cache_bytes: int, storage_options: dict[str, Any] | None = None) -> None:
        self.backend = backend
        """The storage backend the store is read through (for ``verify`` and tools; not a stable API)."""
        self.storage_options = storage_options
        self.path = backend.path
        self._cache = BlockCache(cache_bytes)
        self._closed = False
        self._loaders: weakref.WeakSet[Any] = weakref.WeakSet()
        self._load()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        backend: str | None = None,
        cache_bytes: int = 256 << 20,
        storage_options: dict[str, Any] | None = None,
    ) -> ActStore:
        """Open a store read-only: a Zarr directory, a ``.h5`` file, or a URL (``s3://...``; ``storage_options``
        go to fsspec)."""
        kind = backend or detect_backend(path)
        be = open_backend(path, kind, writable=False, storage_options=storage_options)
        try:
            return cls(be, cache_bytes=cache_bytes, storage_options=storage_options)
        except BaseException:
            be.close()
            raise

    def _load(self) -> None:
        record = Record.parse(self.backend.read_meta(), self.path)
        for be, _ in getattr(self, "_parts", []):
            be.close()
        self._parts: list[tuple[Backend, Record]] = []
        if record.parts:
            self._parts = open_parts(self.path, record.parts, self.storage_options)
            record = merge_records(record, [r for _, r in self._parts], self.path)
        self.record: Record = record
        """The store's metadata record, parsed and checked (a merged one for a multi-part store)."""
        self._chunk_rows = record.layout.chunk_rows
        self._block_rows = record.layout.block_rows
        self._row_cache: dict[str, dict[str, np.ndarray]] = {}
        self._indexes: dict[str, RowIndex] = {}
        self._samples_cache: dict[str, Any] | None = None
        self._readers: dict[str, ArrayReader] = {}
        self._cache.clear()

    def refresh(self) -> ActStore:
        """Re-read the commit record to see rows committed since opening (a writer may still be appending)."""
        self.check_open()
        self._load()
        return self

    def close(self) -> None:
        """Release the files; loaders made from this store stop their threads, and every later read (views
        included) raises :class:`~actstore.StoreClosedError`. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        for loader in list(self._loaders):
            loader.close()
        for be, _ in self._parts:
            be.close()
        self.backend.close()
        self._cache.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        """Raise :class:`~actstore.StoreClosedError` when the store is closed."""
        if self._closed:
            raise StoreClosedError(f"store {self.path} is closed; open it again with actstore.open({str(self.path)!r})")

    def register_loader(self, loader: Any) -> None:
        """Remember (weakly) a loader of this store, to be closed with it."""
        self.check_open()
        self._loaders.add(loader)

    def __enter__(self) -> ActStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- catalog
    @property
    def meta(self) -> dict[str, Any]:
        """The metadata record as JSON (a fresh copy; ``store.record`` is the typed form)."""
        return self.record.to_json()

    @property
    def attrs(self) -> dict[str, Any]:
        """The user attributes given to ``create`` (model, capture config, ...), a fresh copy."""
        return thaw(self.record.attrs)

    @property
    def format_version(self) -> int:
        return self.record.format_version

    @property
    def roles(self) -> list[str]:
        return list(self.record.roles)

    @property
    def layers(self) -> list[int | str]:
        """Every layer of any role, in order."""
        seen: dict[str, int | str] = {}
        for spec in self.record.roles.values():
            for e in spec.layers:
                seen.setdefault(str(e.layer), e.layer)
        return sorted(seen.values(), key=lambda x: (1, str(x)) if isinstance(x, str) else (0, x))

    @property
    def conds(self) -> list[str]:
        return list(self.record.conds)

    @property
    def steps(self) -> list[int]:
        """Denoising steps present in any role (``NO_STEP`` rows excluded)."""
        return sorted({s for role in self.roles for s in self.steps_of(role)})

    def steps_of(self, role: str) -> list[int]:
        """Denoising steps of a role (one pass over its row-table chunks, skipping those of a single step)."""
        steps = self.index(role).distinct("step")
        return [int(s) for s in steps if s != NO_STEP]

    def layers_of(self, role: str) -> list[int | str]:
        return [e.layer for e in self._role(role).layers]

    def num_rows(self, role: str) -> int:
        """Committed rows of a role."""
        self._role(role)
        return int(self.record.commit.roles.get(role, 0))

    @property
    def num_samples(self) -> int:
        return self.record.commit.samples

    @property
    def commit(self) -> dict[str, Any]:
        """The commit record: committed row counts per role / cond, samples, and the writer's progress (JSON, a
        fresh copy)."""
        return self.record.commit.to_json()

    def _role(self, role: str) -> RoleSpec:
        spec = self.record.roles.get(role) if isinstance(role, str) else None
        if spec is None:
            raise UnknownKeyError(f"no role {role!r} in store {self.path}; roles are {self.roles}")
        return spec

    def _layer_entry(self, layer: int | str, role: str) -> LayerSpec:
        spec = self._role(role)
        entry = spec.layer(layer)
        if entry is None:
            raise UnknownKeyError(
                f"no layer {layer!r} for role {role!r} in store {self.path}; layers are {[e.layer for e in spec.layers]}"
            )
        return entry

    # ---------------------------------------------------------------------------------------- readers
    def _reader(self, key: str, width: int, dtype: np.dtype, n_rows: int) -> ArrayReader:
        r = self._readers.get(key)
        if r is None:
            if self._parts:
                r = self._concat_reader(key, width, dtype)
            else:
                r = self._array_reader(self.backend, self.record, key, width, dtype, n_rows)
            self._readers[key] = r
        return r

    def _array_reader(self, be: Backend, record: Record, key: str, width: int, dtype: np.dtype,
                      n_rows: int) -> ArrayReader:
        return open_array(be, record.layout, key, width, dtype, n_rows, self._cache)

    def _concat_reader(self, key: str, width: int, dtype: np.dtype) -> Any:
        readers = []
        for be, record in self._parts:
            n = record.committed(key)
            if n:
                readers.append(self._array_reader(be, record, key, width, dtype, n))
        return ConcatReader(readers, width, dtype, self._chunk_rows)

    def _read_all(self, key: str, width: int, dtype: np.dtype, n_rows: int) -> np.ndarray:
        self.check_open()
        return self._reader(key, width, dtype, n_rows).read_range(0, n_rows)

    # ------------------------------------------------------------------------------------------ views
    def __getitem__(self, key: tuple[Any, ...]) -> ActView:
        if not isinstance(key, tuple) or len(key) not in (2, 3):
            raise UnknownKeyError(
                f"index a store with [layer, role] or [layer, role, step], got {key!r}; "
                f"layers are {self.layers}, roles are {self.roles}"
            )
        view = self.view(key[0], key[1])
        if len(key) == 3:
            return self._filter_steps(view, key[2])
        return view

    def view(self, layer: int | str, role: str) -> ActView:
        """All committed rows of ``layer`` for ``role`` (same as ``store[layer, role]``)."""
        self.check_open()
        entry = self._layer_entry(layer, role)
        reader = self._reader(acts_key(role, str(entry.layer)), entry.d, entry.storage_dtype, self.num_rows(role))
        return ActView(self, entry.layer, role, reader, entry.dtype)

    def _filter_steps(self, view: ActView, step: int | Iterable[int]) -> ActView:
        return self.select(view.layer, view.role, step=step)

    @staticmethod
    def _values(column: str, value: int | Iterable[int]) -> np.ndarray:
        """``value`` (one int or several) as int64 (whether the role holds them is checked by the selection)."""
        values = [value] if isinstance(value, (int, np.integer)) else list(value)
        if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) for v in values):
            raise StoreIndexError(f"{column} must be an int or a list of ints, got {value!r}")
        return np.asarray(values, dtype=np.int64)

    def select(
        self,
        layer: int | str,
        role: str,
        *,
        step: int | Iterable[int] | None = None,
        sample: int | Iterable[int] | None = None,
        where: RowFilter | np.ndarray | None = None,
        match: Mapping[str, int | Iterable[int]] | None = None,
    ) -> ActView:
        """A filtered view: rows whose step / sample is in the given values and for which ``where`` holds.

        ``match`` filters any other integer column the same way (``match={"episode": [3, 4], "task": 7}``).
        A value with no rows in its column raises :class:`UnknownKeyError` (as ``store[layer, role, step]``
        does). ``where`` is a boolean mask over the role's rows, or a callable taking a row table (a dict of
        numpy columns; an unknown column raises :class:`UnknownKeyError`) and returning a mask of its length,
        e.g. ``where=lambda r: r["position"] < 4``. The filter runs chunk by chunk (the callable gets one
        row-table chunk at a time, so it must work row by row) and skips the chunks whose per-chunk min / max
        rule the step / sample / ``match`` values out; the whole row table is never loaded.
        """
        view = self.view(layer, role)
        values: dict[str, np.ndarray] = {}
        label = ""
        for column, value in (("step", step), ("sample", sample), *sorted((match or {}).items())):
            if value is not None:
                values[column] = self._values(column, value)
                label += f", {column}={value!r}"
        if where is not None:
            label += ", where=..."
        if not values and where is None:
            return view
        return view.restrict(self.index(role).select(values, where), label)

    # ------------------------------------------------------------------------------------------ tables
    def rows(self, role: str) -> dict[str, np.ndarray]:
        """The role's whole row table: ``sample``, ``step``, ``position`` and any extra columns, as int64 numpy
        (read on first use, 8 bytes per row and column; filters, views and loaders never need it)."""
        self.check_open()
        cached = self._row_cache.get(role)
        if cached is None:
            cached = self._row_cache[role] = self.index(role).table()
        return cached

    def index(self, role: str) -> RowIndex:
        """The role's row table read chunk by chunk, with its per-chunk statistics (:class:`RowIndex`)."""
        self.check_open()
        found = self._indexes.get(role)
        if found is None:
            cols = list(self._role(role).columns)
            n = self.num_rows(role)
            reader = self._reader(rows_key(role), len(cols), np.dtype("<i8"), n)
            stats = None
            n_chunks = -(-n // self._chunk_rows)
            commit = self.record.commit
            if not self._parts and (commit.row_stats or {}).get(role) == n_chunks and n_chunks:
                crcs = (commit.row_stats_crc32c or {}).get(role)
                stats = CheckedStats(role, self._chunk_rows, None if crcs is None else list(crcs),
                                     n // self._chunk_rows, lambda k: self._array_reader(
                                         self.backend, self.record, stats_key(role), 2 * len(cols), np.dtype("<i8"), k,
                                     ).read_range(0, k), str(self.path))
            found = self._indexes[role] = RowIndex(reader, cols, role, str(self.path), stats)
        return found

    def _cond_spec(self, name: str) -> CondSpec:
        spec = self.record.conds.get(name) if isinstance(name, str) else None
        if spec is None:
            raise UnknownKeyError(f"no conditioning {name!r} in store {self.path}; conds are {self.conds}")
        return spec

    def cond_rows(self, name: str) -> dict[str, np.ndarray]:
        """The (sample, step) of every stored conditioning vector."""
        self._cond_spec(name)
        n = int(self.record.commit.conds.get(name, 0))
        mat = self._read_all(cond_rows_key(name), 2, np.dtype("<i8"), n)
        return {"sample": np.ascontiguousarray(mat[:, 0]), "step": np.ascontiguousarray(mat[:, 1])}

    def cond(self, name: str, role: str | None = None, rows: np.ndarray | None = None) -> torch.Tensor:
        """Conditioning vectors; with ``role``: aligned row for row with ``store[layer, role]`` (joined on
        sample and step), optionally only for the role rows ``rows`` (e.g. ``view.row_index``)."""
        spec = self._cond_spec(name)
        n = int(self.record.commit.conds.get(name, 0))
        values = self._read_all(cond_acts_key(name), spec.d, spec.storage_dtype, n)
        if role is None:
            return from_storage(values, spec.dtype)
        table = self.rows(role) if rows is None else self.index(role).rows_at(np.asarray(rows))
        r_sample, r_step = table["sample"], table["step"]
        index = self._join(self.cond_rows(name), r_sample, r_step, name, role)
        return from_storage(np.ascontiguousarray(values[index]), spec.dtype)

    def _join(self, crow: dict[str, np.ndarray], sample: np.ndarray, step: np.ndarray, name: str, role: str) -> np.ndarray:
        keys = np.stack([crow["sample"], crow["step"]], axis=1)
        order = np.lexsort((keys[:, 1], keys[:, 0]))
        sk = keys[order]
        if len(sk) > 1 and np.any(np.all(sk[1:] == sk[:-1], axis=1)):
            raise CorruptStoreError(f"conditioning {name!r} in {self.path} holds a (sample, step) twice")
        # encode (sample, step) pairs into one sortable structured view
        pair = np.dtype([("s", "<i8"), ("t", "<i8")])
        hay = np.ascontiguousarray(sk).view(pair).reshape(-1)
        needle = np.ascontiguousarray(np.stack([sample, step], axis=1)).view(pair).reshape(-1)
        pos = np.searchsorted(hay, needle)
        pos_c = np.minimum(pos, max(len(hay) - 1, 0))
        ok = (pos < len(hay)) & (hay[pos_c] == needle) if len(hay) else np.zeros(len(needle), dtype=bool)
        if not np.all(ok):
            j = int(np.argmin(ok))
            raise UnknownKeyError(
                f"row {j} of role {role!r} (sample {int(sample[j])}, step {int(step[j])}) has no {name!r} "
                f"conditioning in {self.path}; conditioning exists only per (sample, denoising step)"
            )
        return order[pos_c]

    # ----------------------------------------------------------------------------------------- samples
    def samples(self) -> dict[str, Any]:
        """The per-sample table: ``sample`` and extra int columns, plus ``prompt`` (list of str),
        ``prompt_ids`` and ``instruction_mask`` (bool) where stored."""
        self.check_open()
        if self._samples_cache is not None:
            return self._samples_cache
        spec = self.record.samples
        out: dict[str, Any] = {}
        n = self.num_samples
        if spec is None:
            self._samples_cache = {"sample": np.zeros(0, dtype=np.int64)}
            return self._samples_cache
        stored = {a.key: self._read_all(a.key, a.width, a.dtype, n) for a in spec.arrays()}  # the kept arrays
        for j, c in enumerate(spec.columns):
            out[c] = np.ascontiguousarray(stored[SAMPLE_KEYS["table"]][:, j])
        if spec.instruction_mask:
            out["instruction_mask"] = stored[SAMPLE_KEYS["instruction_mask"]].astype(bool)
        if spec.prompt_ids:
            out["prompt_ids"] = stored[SAMPLE_KEYS["prompt_ids"]]
        if spec.prompt:
            raw = stored[SAMPLE_KEYS["prompt"]]
            out["prompt"] = [bytes(r).rstrip(b"\0").decode("utf-8", errors="replace") for r in raw]
        self._samples_cache = out
        return out

    def _sample_pos(self, sample: int) -> int:
        ids = self.samples()["sample"]
        hits = np.nonzero(ids == int(sample))[0]
        if hits.size == 0:
            shown = ids[:10].tolist()
            raise UnknownKeyError(
                f"no sample {sample!r} in store {self.path}; it holds {ids.size} samples, e.g. {shown}"
            )
        return int(hits[0])

    def instruction_mask(self, sample: int) -> np.ndarray:
        """That sample's prompt mask (True = real prompt token), over the stored prompt length."""
        table = self.samples()
        if "instruction_mask" not in table:
            raise UnknownKeyError(f"store {self.path} holds no instruction mask; samples have {sorted(table)}")
        return table["instruction_mask"][self._sample_pos(sample)]

    def prompt(self, sample: int) -> str:
        table = self.samples()
        if "prompt" not in table:
            raise UnknownKeyError(f"store {self.path} holds no prompt text; samples have {sorted(table)}")
        return table["prompt"][self._sample_pos(sample)]

    def instructions(self, layer: int | str, sample: int, role: str = "instruction") -> torch.Tensor:
        """That sample's instruction-token rows at ``layer``, ordered by prompt position."""
        self._sample_pos(sample)
        view = self.select(layer, role, sample=int(sample))
        return view.filter(np.argsort(view.rows()["position"], kind="stable"))[:]

    # ------------------------------------------------------------------------------------------ loader
    def loader(
        self,
        layer: int | str | Sequence[int | str],
        role: str,
        *,
        step: int | Iterable[int] | None = None,
        sample: int | Iterable[int] | None = None,
        where: RowFilter | np.ndarray | None = None,
        match: Mapping[str, int | Iterable[int]] | None = None,
        batch_size: int = 4096,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_chunks: int = 8,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        dtype: str | None = None,
        with_rows: bool = False,
        pin_memory: bool = False,
        device: str | None = None,
        prefetch: int = 2,
        reuse_buffers: bool = False,
        config: LoaderConfig | None = None,
        **unknown: Any,
    ) -> ActLoader:
        """Minibatches of ``store[layer, role]`` for training (an :class:`~actstore.ActLoader`).

        ``layer`` may be a list of layers of the role (same rows, same order; batches are dicts). ``step`` /
        ``sample`` / ``where`` filter rows as in :meth:`select`. The other options are the fields of
        :class:`~actstore.LoaderConfig` (documented there), with its defaults; alternatively pass a whole
        ``config`` and leave them at their defaults. Every yielded host batch is a tensor of its own unless
        ``reuse_buffers=True`` (a ring of reused buffers: faster, but a batch is overwritten a few batches later).
        An unknown keyword raises :class:`~actstore.ConfigError` naming the valid options.
        """
        from ..train._loader import ActLoader
        from ..train._loader_config import loader_config

        options = {
            "batch_size": batch_size, "shuffle": shuffle, "seed": seed, "shuffle_chunks": shuffle_chunks,
            "drop_last": drop_last, "rank": rank, "world_size": world_size, "dtype": dtype, "with_rows": with_rows,
            "pin_memory": pin_memory, "device": device, "prefetch": prefetch, "reuse_buffers": reuse_buffers,
        }
        return ActLoader(self, layer, role, step=step, sample=sample, where=where, match=match,
                         config=loader_config(config, options, unknown))

    def features(self, name: str, *, verify: bool = True) -> Any:
        """The feature group ``name`` written by ``actstore features`` (a :class:`~actstore.FeatureSet`)."""
        from ..tools._features import open_features

        self.check_open()
        return open_features(self, name, verify=verify)

    # ------------------------------------------------------------------------------------------ summary
    def stored_bytes(self) -> int:
        return self.backend.stored_bytes()

    def __repr__(self) -> str:
        roles = ", ".join(f"{r}: {self.num_rows(r)} rows" for r in self.roles)
        return f"ActStore({self.path!r}, layers={self.layers}, roles={{{roles}}}, samples={self.num_samples})"


def open_store(
    path: str | os.PathLike[str],
    *,
    backend: str | None = None,
    cache_bytes: int = 256 << 20,
    storage_options: dict[str, Any] | None = None,
) -> ActStore:
    """Open a store read-only (``actstore.open``, the reading counterpart of ``actstore.create``); the same as
    :meth:`ActStore.open`."""
    return ActStore.open(path, backend=backend, cache_bytes=cache_bytes, storage_options=storage_options)
