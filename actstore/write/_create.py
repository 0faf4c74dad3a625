"""``create``: open a writer on a new store or resume an existing one, after checking what it resumes from.

A resumed store's record is checked against its checksum and schema (``Record.parse``) and each array's own
metadata against the record (``_arraymeta``) before anything is appended: a writer never extends a store whose
description it cannot trust.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from .. import __version__
from .._errors import ConfigError, CorruptStoreError, SchemaMismatchError
from ..format._record import Layout, Record
from ..read._blocksums import KIND as BLOCK_SUMS_KIND
from ..storage._backend import Backend, create_backend, detect_backend, open_backend, store_exists
from ..storage._h5stage import StagedH5Backend, open_staged
from ..storage._parts import ensure_root, parse_part, part_path
from ..storage._remote import is_url
from ._config import StoreConfig
from ._writer import StoreWriter

__all__ = ["check_resumable", "create"]




def check_resumable(be: Backend, record: Record) -> None:
    """Raise :class:`CorruptStoreError` naming the array and field when an array's own metadata (a Zarr
    ``zarr.json``, an HDF5 dataset) disagrees with the record."""
    problems = be.check_array_docs(record)
    if problems:
        shown = "; ".join(p for _, p in problems[:3])
        raise CorruptStoreError(f"cannot resume {be.path}: {len(problems)} arrays disagree with the metadata record: "
                                f"{shown}. Run `actstore verify {be.path}`")


def create(
    path: str | os.PathLike[str],
    attrs: Mapping[str, Any] | None = None,
    *,
    config: StoreConfig | None = None,
    backend: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    part: str | tuple[int, int] | None = None,
    **overrides: Any,
) -> StoreWriter:
    """Open a writer on a new store, or (``resume=True``) append after an existing store's committed rows.

    ``backend`` is ``"zarr"`` or ``"hdf5"`` (default: from the suffix, ``.h5`` means HDF5). Keyword ``overrides``
    replace fields of ``config`` (``codec="zstd"``, ``chunk_rows=8192``, ...). ``path`` may be a URL
    (``s3://bucket/run.zarr``); ``storage_options`` go to fsspec (endpoint, credentials). ``part="i/N"`` (or
    ``(i, N)``) writes part ``i`` of a store that ``N`` processes write at once (Zarr only; see ``_parts``).
    """
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(StoreConfig)})
    if unknown:  # a typo is a ConfigError naming the choices, as for store.loader(...), not a bare TypeError
        raise ConfigError(f"unknown store option {unknown[0]!r}; valid options are "
                          f"{[f.name for f in dataclasses.fields(StoreConfig)]} and attrs, config, backend, resume, "
                          "overwrite, storage_options, part")
    cfg = dataclasses.replace(config or StoreConfig(), **overrides) if overrides else (config or StoreConfig())
    kind = backend or detect_backend(path)
    if kind not in ("zarr", "hdf5"):
        raise SchemaMismatchError(f"unknown backend {kind!r}; valid backends are ['zarr', 'hdf5']")
    attrs = dict(attrs or {})
    try:
        json.dumps(attrs)
    except (TypeError, ValueError) as exc:
        raise SchemaMismatchError(f"attrs must be JSON-serialisable: {exc}") from None
    if part is not None:
        i, n = parse_part(part)
        if kind != "zarr":
            raise SchemaMismatchError(f"parts need the zarr backend (one HDF5 file has one writer), got {kind!r}")
        layout = Layout(cfg.codec, cfg.chunk_rows, cfg.blocks)
        ensure_root(str(path), n, attrs, layout, f"actstore {__version__}", storage_options)
        path = part_path(path, i)
    if kind == "hdf5" and not is_url(path):  # crash-safe: staged in Zarr, published by atomic rename
        staged, resumed = open_staged(path, resume=resume, overwrite=overwrite)
        return _start(staged, attrs, cfg, resumed=resumed)
    resumed = resume and store_exists(path, kind, storage_options)
    if resumed:
        be = open_backend(path, kind, writable=True, storage_options=storage_options)
    else:
        be = create_backend(path, kind, overwrite=overwrite, storage_options=storage_options)
    try:
        be.lock()
    except BaseException:
        be.close()
        raise
    return _start(be, attrs, cfg, resumed=resumed)


def _start(be: Backend, attrs: dict[str, Any], cfg: StoreConfig, *, resumed: bool) -> StoreWriter:
    """A writer on a locked backend: a resumed store's record and arrays checked, or a new store's first record."""
    try:
        if resumed:
            record = Record.parse(be.read_meta(), be.path)
            check_resumable(be, record)
            if attrs:
                record = record.with_attrs(attrs)
        else:
            layout = Layout(cfg.codec, cfg.chunk_rows, cfg.blocks, BLOCK_SUMS_KIND if be.block_sums else None)
            record = Record.new(attrs, layout, f"actstore {__version__}")
            be.write_meta(record.seal(), durable=cfg.durable)
        return StoreWriter(be, record, cfg, resumed=resumed)  # reads a resumed store's partial chunks back
    except BaseException:  # nothing holds the backend: release its lock now, not at process exit
        be.close_unpublished() if isinstance(be, StagedH5Backend) else be.close()
        raise
