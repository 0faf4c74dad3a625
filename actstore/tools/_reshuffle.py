"""``shuffle_store``: a copy of a store whose rows are in one uniformly random order, computed out of core.

A training loader reads whole chunks, so a batch can only mix the rows of the chunks in its buffer. Rows captured
together (one sample, one denoising step) sit in the same chunks, so even a large buffer over-represents a few
samples per batch. A store written in a uniformly random row order fixes that once: afterwards *any* read order,
sequential included, gives batches mixed like a uniform shuffle, at the loader's full sequential speed.

The permutation is built by a two-pass bucket shuffle (Rao-Sandelius), which never holds more than one bucket in
memory and reads and writes every byte twice:

1. *Scatter.* The source rows are read chunk by chunk; each row goes to one of ``B`` buckets drawn uniformly at
   random (``numpy.random.default_rng([seed, role, chunk])``). Each bucket is a set of raw files in a work
   directory next to the destination: one per layer (storage bits) and one for the row table.
2. *Permute.* Each bucket is read back, its rows permuted uniformly at random
   (``default_rng([seed, role, 2**31, bucket])``) and appended to the destination; the writer commits after
   every bucket.

Independent uniform bucket labels followed by a uniform permutation inside each bucket give a uniformly random
permutation of all rows (every permutation has the same probability). Every layer of a role and its row table
are permuted by the same permutation; conditioning vectors and the sample table are copied unchanged (they are
joined to rows by ``(sample, step)``, not by position).

Resumable: the work directory holds ``state.json`` (the source's commit, the seed, the bucket counts, which roles
are scattered); the destination's commit progress says how many buckets of each role are in. A killed shuffle
rerun with the same arguments redoes at most one role's scatter or one bucket. The work directory (about the
source's uncompressed size) is removed at the end.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import SchemaMismatchError, StoreExistsError
from ..format._format import from_storage

__all__ = ["ShuffleConfig", "bucket_permutation", "shuffle_store"]

_PERMUTE_KEY = 1 << 31
"""Separates the seeds of the permute pass from those of the scatter pass."""


@dataclass(frozen=True)
class ShuffleConfig:
    """How :func:`shuffle_store` permutes a store."""

    seed: int = 0
    """Seed of the permutation (the same seed gives the same order)."""
    bucket_bytes: int = 512 << 20
    """Target size of one bucket in memory during the permute pass (all layers and the row table of its rows)."""
    codec: str | None = None
    """Codec of the destination (None: the source's)."""
    overwrite: bool = False
    """Replace an existing destination (and discard an unfinished shuffle's work directory)."""
    progress: bool = False
    """Show progress bars."""

    def __post_init__(self) -> None:
        from .._errors import ConfigError

        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be an int >= 0, got {self.seed!r}")
        if not isinstance(self.bucket_bytes, int) or self.bucket_bytes < (1 << 12):
            raise ConfigError(f"bucket_bytes must be an int >= 4096, got {self.bucket_bytes!r}")


# ------------------------------------------------------------------------------------------ the permutation
def _bucket_ids(seed: int, role_index: int, chunk: int, n: int, n_buckets: int) -> np.ndarray:
    return np.random.default_rng([seed, role_index, chunk]).integers(0, n_buckets, n)


def _bucket_perm(seed: int, role_index: int, bucket: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, role_index, _PERMUTE_KEY, bucket]).permutation(n)


def _scatter_order(ids: np.ndarray, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one chunk grouped by bucket (source order kept within a bucket) and the group boundaries."""
    order = np.argsort(ids, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=n_buckets))])
    return order, bounds


def bucket_permutation(n_rows: int, chunk_rows: int, n_buckets: int, seed: int, role_index: int = 0) -> np.ndarray:
    """The source row index of every destination row, as :func:`shuffle_store` computes it (in memory).

    For tests and for small stores: ``dst_rows == src_rows[bucket_permutation(...)]``.
    """
    buckets: list[list[np.ndarray]] = [[] for _ in range(n_buckets)]
    for chunk, a in enumerate(range(0, n_rows, chunk_rows)):
        b = min(n_rows, a + chunk_rows)
        order, bounds = _scatter_order(_bucket_ids(seed, role_index, chunk, b - a, n_buckets), n_buckets)
        for k in range(n_buckets):
            buckets[k].append(a + order[bounds[k]:bounds[k + 1]])
    out = []
    for k in range(n_buckets):
        rows = np.concatenate(buckets[k]) if buckets[k] else np.zeros(0, np.int64)
        out.append(rows[_bucket_perm(seed, role_index, k, len(rows))])
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


# ------------------------------------------------------------------------------------------ state
def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, sort_keys=True))
    os.replace(tmp, path)


def _ranges(n: int, step: int) -> Iterator[tuple[int, int, int]]:
    for i, a in enumerate(range(0, n, step)):
        yield i, a, min(n, a + step)


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", unit_scale=True, disable=not progress, leave=False)


@dataclass(frozen=True)
class _RoleLayout:
    """What one role's rows look like: layers (name, width, storage dtype, dtype name) and row columns."""

    role: str
    index: int
    layers: tuple[tuple[Any, int, np.dtype, str], ...]
    columns: tuple[str, ...]

    @property
    def row_bytes(self) -> int:
        return sum(d * dt.itemsize for _, d, dt, _ in self.layers) + 8 * len(self.columns)

    def files(self, work: Path, bucket: int) -> list[Path]:
        stem = work / self.role / f"{bucket:06d}"
        return [stem.with_name(f"{stem.name}.rows.bin")] + [
            stem.with_name(f"{stem.name}.{layer}.bin") for layer, *_ in self.layers
        ]


def _role_layouts(store: Any) -> list[_RoleLayout]:
    out = []
    for i, role in enumerate(store.roles):
        spec = store.record.roles[role]
        layers = tuple((e.layer, e.d, e.storage_dtype, e.dtype) for e in spec.layers)
        out.append(_RoleLayout(role, i, layers, spec.columns))
    return out


# ------------------------------------------------------------------------------------------ passes
def _scatter(store: Any, lay: _RoleLayout, work: Path, n_buckets: int, seed: int, progress: bool) -> list[int]:
    """Pass 1 for one role: every source row appended to its bucket's files. Returns the rows per bucket."""
    shutil.rmtree(work / lay.role, ignore_errors=True)
    (work / lay.role).mkdir(parents=True)
    n = store.num_rows(lay.role)
    chunk_rows = store.record.layout.chunk_rows
    table = store.rows(lay.role)
    views = [store.view(layer, lay.role) for layer, *_ in lay.layers]
    counts = np.zeros(n_buckets, np.int64)
    handles = [[open(p, "wb") for p in lay.files(work, k)] for k in range(n_buckets)]  # noqa: SIM115
    try:
        with _bar(n, f"scatter {lay.role}", progress) as bar:
            for chunk, a, b in _ranges(n, chunk_rows):
                order, bounds = _scatter_order(_bucket_ids(seed, lay.index, chunk, b - a, n_buckets), n_buckets)
                rows = np.stack([table[c][a:b] for c in lay.columns], axis=1).astype("<i8")[order]
                acts = [v.numpy(slice(a, b))[order] for v in views]
                for k in np.flatnonzero(bounds[1:] > bounds[:-1]):
                    s, e = bounds[k], bounds[k + 1]
                    for f, part in zip(handles[k], [rows, *acts], strict=True):
                        f.write(part[s:e].tobytes())
                counts += bounds[1:] - bounds[:-1]
                bar.update(b - a)
    finally:
        for files in handles:
            for f in files:
                f.close()
    return counts.tolist()


def _permute(writer: Any, lay: _RoleLayout, work: Path, counts: list[int], start: int, seed: int,
             progress: dict[str, Any], show: bool) -> None:
    """Pass 2 for one role: buckets ``start..`` permuted in memory and appended, a commit after each."""
    with _bar(sum(counts[start:]), f"permute {lay.role}", show) as bar:
        for k in range(start, len(counts)):
            n = counts[k]
            if n:
                paths = lay.files(work, k)
                perm = _bucket_perm(seed, lay.index, k, n)
                rows = np.fromfile(paths[0], dtype="<i8").reshape(n, len(lay.columns))[perm]
                acts = {}
                for (layer, d, dt, name), p in zip(lay.layers, paths[1:], strict=True):
                    values = np.fromfile(p, dtype=dt)
                    if values.size != n * d:
                        raise SchemaMismatchError(f"shuffle work file {p} holds {values.size} values, expected {n * d}")
                    acts[layer] = from_storage(np.ascontiguousarray(values.reshape(n, d)[perm]), name)
                writer.append(lay.role, {c: rows[:, j] for j, c in enumerate(lay.columns)}, acts)
            progress["buckets_done"][lay.role] = k + 1
            writer.commit({"shuffle": progress})
            bar.update(n)


def _copy_tables(store: Any, writer: Any) -> None:
    """The sample table and every conditioning array, unchanged."""
    step = store.record.layout.chunk_rows
    spec = store.record.samples
    if store.num_samples:
        table = store.samples()
        for _, a, b in _ranges(store.num_samples, step):
            extra = {c: table[c][a:b] for c in spec.columns if c != "sample"}
            kw: dict[str, Any] = {k: table[k][a:b] for k in ("prompt_ids", "instruction_mask", "prompt") if k in table}
            writer.append_samples(table["sample"][a:b], **kw, **extra)
    for name in store.conds:
        rows = store.cond_rows(name)
        values = store.cond(name)
        for _, a, b in _ranges(len(rows["sample"]), step):
            writer.append_cond(name, {k: v[a:b] for k, v in rows.items()}, values[a:b].clone())


# ------------------------------------------------------------------------------------------ entry point
def shuffle_store(src: str | os.PathLike[str], dst: str | os.PathLike[str], config: ShuffleConfig | None = None,
                  **overrides: Any) -> Path:
    """Write a copy of ``src`` at ``dst`` with each role's rows in one uniformly random order (see the module doc).

    Rerunning with the same arguments after an interruption continues where it stopped. Keyword ``overrides``
    replace fields of ``config`` (``seed=1``, ``progress=True``, ...). Returns ``dst``.
    """
    import dataclasses

    import actstore
    from actstore.read._reader import ActStore

    cfg = dataclasses.replace(config or ShuffleConfig(), **overrides)
    dst = Path(dst)
    work = Path(f"{dst}.shuffle-work")
    if dst.resolve() == Path(src).resolve():
        raise SchemaMismatchError(f"cannot shuffle {src} onto itself; give another output path")
    with ActStore.open(src) as store:
        layouts = _role_layouts(store)
        fingerprint = {
            "source": str(Path(src).resolve()), "seed": cfg.seed, "commit_seq": store.record.commit.seq,
            "rows": {lay.role: store.num_rows(lay.role) for lay in layouts},
            "buckets": {lay.role: max(1, math.ceil(store.num_rows(lay.role) * lay.row_bytes / cfg.bucket_bytes))
                        for lay in layouts},
        }
        state: dict[str, Any] | None = None
        if (work / "state.json").is_file() and not cfg.overwrite:
            state = json.loads((work / "state.json").read_text())
            if state.get("fingerprint") != fingerprint:
                raise StoreExistsError(
                    f"{work} holds an unfinished shuffle of another source or seed; rerun with the same source and "
                    f"seed to continue it, or pass overwrite=True (--overwrite) to start again")
        elif dst.exists() and not cfg.overwrite:
            raise StoreExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
        if state is None:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            state = {"fingerprint": fingerprint, "counts": {}}
            _write_json(work / "state.json", state)
        resume = dst.exists() and not cfg.overwrite
        layout = store.record.layout
        spec = store.record.samples
        same = cfg.codec is None or cfg.codec == layout.codec
        config = actstore.StoreConfig(
            codec=layout.codec if same else cfg.codec, chunk_rows=layout.chunk_rows,
            block_rows=layout.block_rows if same else None, autocommit=False, commit_interval_s=0.0,
            max_prompt_bytes=(spec.prompt_bytes if spec else None) or 1024)
        attrs = store.attrs
        with actstore.create(dst, attrs=attrs, config=config, resume=resume, overwrite=cfg.overwrite) as w:
            done = dict(((w.committed_progress or {}).get("shuffle") or {}).get("buckets_done") or {}) if resume else {}
            progress = {"seed": cfg.seed, "buckets_done": done}
            if not resume or "tables" not in ((w.committed_progress or {}).get("shuffle") or {}):
                _copy_tables(store, w)
                progress["tables"] = True
                w.commit({"shuffle": progress})
            progress["tables"] = True
            for lay in layouts:
                n_buckets = fingerprint["buckets"][lay.role]
                start = int(done.get(lay.role, 0))
                if start >= n_buckets:
                    continue
                counts = state["counts"].get(lay.role)
                if counts is None:
                    counts = _scatter(store, lay, work, n_buckets, cfg.seed, cfg.progress)
                    state["counts"][lay.role] = counts
                    _write_json(work / "state.json", state)
                _permute(w, lay, work, counts, start, cfg.seed, progress, cfg.progress)
            final = dict(store.commit.get("progress") or {})
            final["shuffle"] = {**progress, "complete": True}
            w.commit(final)
    shutil.rmtree(work, ignore_errors=True)
    return dst
