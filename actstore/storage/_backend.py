"""Which backend serves a path: ``create_backend`` / ``open_backend`` / ``store_exists`` for a local Zarr
directory, a Zarr URL (fsspec) or an HDF5 file. The interface is ``_storage.Backend``; the backends are ``_zarr``,
``_remote`` and ``_h5``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._errors import NotAStoreError
from ._h5 import H5Backend
from ._lock import FileLock
from ._remote import ZarrRemoteBackend, is_url
from ._storage import BACKENDS, LOCK_NAME, ROOT_WAIT, Backend, detect_backend, max_chunk_bytes
from ._zarr import ZarrBackend, ZarrDirBackend, interrupted_create

__all__ = ["BACKENDS", "LOCK_NAME", "ROOT_WAIT", "Backend", "FileLock", "ZarrBackend", "ZarrDirBackend",
           "create_backend", "detect_backend", "max_chunk_bytes", "open_backend", "store_exists"]


def create_backend(
    path: str | os.PathLike[str], backend: str, *, overwrite: bool, storage_options: dict[str, Any] | None = None
) -> Backend:
    """A new, empty store of the given backend at ``path`` (a local path or, for zarr, a URL)."""
    if backend == "hdf5":
        return H5Backend.create(path, overwrite=overwrite)
    if is_url(path):
        return ZarrRemoteBackend.create(str(path), overwrite=overwrite, storage_options=storage_options)
    return ZarrDirBackend.create(_local(path), overwrite=overwrite)


def open_backend(
    path: str | os.PathLike[str], backend: str, *, writable: bool, storage_options: dict[str, Any] | None = None
) -> Backend:
    """An existing store; raises :class:`NotAStoreError` when there is none."""
    if is_url(path):
        if backend == "hdf5":
            raise NotAStoreError(f"HDF5 stores must be local files, got the URL {path}")
        return ZarrRemoteBackend(str(path), storage_options=storage_options, read_only=not writable)
    path = _local(path)
    if not Path(path).exists():
        raise NotAStoreError(f"no store at {path}: the path does not exist")
    if backend == "hdf5":
        return H5Backend(path, "r+" if writable else "r")
    if not Path(path).is_dir():
        raise NotAStoreError(f"{path} is a file, not a Zarr store directory (HDF5 stores end in .h5)")
    return ZarrDirBackend(path)


def store_exists(path: str | os.PathLike[str], backend: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``path`` holds a store's root (for ``create(resume=True)``)."""
    if is_url(path):
        return ZarrRemoteBackend(str(path), storage_options=storage_options, read_only=True).has_root()
    local = Path(_local(path))
    return local.exists() and not (backend == "zarr" and interrupted_create(local))



def _local(path: str | os.PathLike[str]) -> str:
    text = str(path)
    return text[len("file://") :] if text.startswith("file://") else text
