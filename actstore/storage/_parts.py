"""Stores written by several processes at once: one independent, resumable sub-store per part, one view on read.

``create(path, part=(i, n))`` writes part ``i`` of ``n`` into ``{path}/parts/{i:05d}`` (an ordinary store with its
own commit record and lock) and makes sure ``{path}`` holds a root whose metadata says ``"parts": n``. Readers
opening ``path`` see the parts concatenated in part order (a deterministic row order); the schemas of the parts
must agree and sample ids must be unique across parts.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

from .._errors import CorruptStoreError, SchemaMismatchError, StoreExistsError, StoreLockedError
from ..format._format import new_metadata, seal_metadata, validate_metadata
from . import _backend
from ._backend import LOCK_NAME, Backend, ZarrDirBackend, open_backend
from ._lock import FileLock, lock_error

__all__ = ["ensure_root", "merge_metadata", "parse_part", "part_path"]


def parse_part(part: str | tuple[int, int]) -> tuple[int, int]:
    """``"i/N"`` or ``(i, N)`` -> ``(i, N)`` with ``0 <= i < N``."""
    try:
        if isinstance(part, str):
            i_text, n_text = part.split("/")
            i, n = int(i_text), int(n_text)
        else:
            i, n = (int(x) for x in part)
    except (ValueError, TypeError):
        raise SchemaMismatchError(f"part must be 'i/N' or (i, N), got {part!r}") from None
    if not 0 <= i < n:
        raise SchemaMismatchError(f"part {i}/{n} is out of range: i must be in [0, {n})")
    return i, n


def part_path(root: str | os.PathLike[str], i: int) -> str:
    return f"{str(root).rstrip('/')}/parts/{i:05d}"


def ensure_root(
    root: str, n: int, attrs: dict[str, Any], layout: dict[str, Any], library: str,
    storage_options: dict[str, Any] | None,
) -> None:
    """Create the root of an ``n``-part store, or check that the existing root agrees.

    Locally the root's lock file decides: the root is read under the lock held shared (as every part's writer
    holds it for its lifetime, see ``ZarrDirBackend.lock``) and written only under it held exclusively, so parts
    starting together write it once, and a single-store writer of the same path (which holds it exclusively)
    makes this a ``StoreLockedError`` instead of a mix of both layouts."""
    from ._remote import ZarrRemoteBackend, is_url

    if is_url(root):  # object stores have no locks: racing parts write the same document, the last one wins
        be: Backend = ZarrRemoteBackend(root, storage_options=storage_options, read_only=False)
        try:
            _ensure_meta(be, root, n, attrs, layout, library, write=True)
        finally:
            be.close()
        return
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreExistsError(f"{root} exists and is not a directory; cannot write parts into it") from None
    except OSError as exc:
        raise lock_error(exc, root, "create the store directory") from None
    be = ZarrDirBackend(root)
    deadline = time.monotonic() + _backend.ROOT_WAIT
    while True:
        for shared in (True, False):
            try:
                lock = FileLock(Path(root) / LOCK_NAME, root, shared=shared)
            except StoreLockedError:
                continue
            try:
                if _ensure_meta(be, root, n, attrs, layout, library, write=not shared):
                    return
            finally:
                lock.release()
        if time.monotonic() > deadline:
            raise StoreLockedError(f"{root} is open for writing as a single store (lock held); cannot add a part")
        time.sleep(0.005)


def _ensure_meta(
    be: Backend, root: str, n: int, attrs: dict[str, Any], layout: dict[str, Any], library: str, *, write: bool
) -> bool:
    """Check the root's metadata declares ``n`` parts; absent, write it (if ``write``). False: absent, not written."""
    try:
        meta = validate_metadata(be.read_meta(), root)
    except FileNotFoundError:
        meta = None
    if meta is None:
        if not write:
            return False
        meta = new_metadata(attrs, layout, library)
        meta["parts"] = n
        be.write_meta(seal_metadata(meta), durable=False)  # the layout and part count are covered by its checksum
    elif meta.get("parts") != n:
        have = meta.get("parts")
        raise SchemaMismatchError(
            f"{root} is " + ("a single-part store" if have is None else f"a store of {have} parts")
            + f"; cannot write part of {n}"
        )
    return True


def open_parts(root: str, n: int, storage_options: dict[str, Any] | None) -> list[tuple[Backend, dict[str, Any]]]:
    """All ``n`` parts, in part order, each with its validated metadata. A part without its directory or its
    ``zarr.json`` is a :class:`CorruptStoreError` (a reader must never see fewer rows than were committed)."""
    out: list[tuple[Backend, dict[str, Any]]] = []
    try:
        for i in range(n):
            path = part_path(root, i)
            try:
                be = open_backend(path, "zarr", writable=False, storage_options=storage_options)
            except FileNotFoundError:
                raise CorruptStoreError(
                    f"part {i} of {n} of {root} is missing ({path} does not exist): its rows cannot be read; if "
                    "its writer has not started yet, open the store once it has"
                ) from None
            try:
                meta = validate_metadata(be.read_meta(), path)
            except FileNotFoundError:
                be.close()
                raise CorruptStoreError(
                    f"part {i} of {n} of {root} has no readable zarr.json ({path}): its rows cannot be read; if its "
                    "writer has only just started, open the store once it has written its first commit"
                ) from None
            out.append((be, meta))
    except BaseException:
        for be, _ in out:
            be.close()
        raise
    return out


def merge_metadata(root_meta: dict[str, Any], parts: list[dict[str, Any]], root: str) -> dict[str, Any]:
    """One metadata document for the concatenation of ``parts`` (schemas must agree; counts add up)."""
    merged = copy.deepcopy(root_meta)
    commit = {"seq": 0, "time": None, "roles": {}, "conds": {}, "samples": 0, "progress": None, "parts": []}
    for i, meta in enumerate(parts):
        for kind in ("roles", "conds"):
            for name, spec in meta[kind].items():
                have = merged[kind].setdefault(name, spec)
                if have != spec:
                    raise CorruptStoreError(f"part {i} of {root} stores {kind[:-1]} {name!r} as {spec}, others as {have}")
        if meta["samples"] is not None:
            if merged["samples"] is None:
                merged["samples"] = meta["samples"]
            elif merged["samples"] != meta["samples"]:
                raise CorruptStoreError(f"part {i} of {root} has a different samples table schema")
        c = meta["commit"]
        for kind in ("roles", "conds"):
            for name, count in c[kind].items():
                commit[kind][name] = commit[kind].get(name, 0) + count
        commit["samples"] += c["samples"]
        commit["seq"] += c["seq"]
        commit["parts"].append({"seq": c["seq"], "time": c["time"], "progress": c.get("progress")})
        for key, count in c.get("nonfinite", {}).items():
            commit.setdefault("nonfinite", {})
            commit["nonfinite"][key] = commit["nonfinite"].get(key, 0) + count
    merged["commit"] = commit
    return merged
