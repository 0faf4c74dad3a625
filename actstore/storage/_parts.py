"""Stores written by several processes at once: one independent, resumable sub-store per part, one view on read.

``create(path, part=(i, n))`` writes part ``i`` of ``n`` into ``{path}/parts/{i:05d}`` (an ordinary store with its
own commit record and lock) and makes sure ``{path}`` holds a root whose metadata says ``"parts": n``. Readers
opening ``path`` see the parts concatenated in part order (a deterministic row order); the schemas of the parts
must agree and sample ids must be unique across parts.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from .._errors import CorruptStoreError, SchemaMismatchError, StoreExistsError, StoreLockedError
from ..format._record import Commit, Layout, Record, freeze
from . import _backend
from ._backend import LOCK_NAME, Backend, ZarrDirBackend, open_backend
from ._lock import FileLock, lock_error

__all__ = ["ensure_root", "merge_records", "open_parts", "parse_part", "part_path"]


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
    root: str, n: int, attrs: dict[str, Any], layout: Layout, library: str,
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
    be: Backend, root: str, n: int, attrs: dict[str, Any], layout: Layout, library: str, *, write: bool
) -> bool:
    """Check the root's metadata declares ``n`` parts; absent, write it (if ``write``). False: absent, not written."""
    try:
        record: Record | None = Record.parse(be.read_meta(), root)
    except FileNotFoundError:
        record = None
    if record is None:
        if not write:
            return False
        record = Record.new(attrs, layout, library, parts=n)
        be.write_meta(record.seal(), durable=False)  # the layout and part count are covered by its checksum
    elif record.parts != n:
        have = record.parts
        raise SchemaMismatchError(
            f"{root} is " + ("a single-part store" if have is None else f"a store of {have} parts")
            + f"; cannot write part of {n}"
        )
    return True


def open_parts(root: str, n: int, storage_options: dict[str, Any] | None) -> list[tuple[Backend, Record]]:
    """All ``n`` parts, in part order, each with its record. A part without its directory or its ``zarr.json`` is
    a :class:`CorruptStoreError` (a reader must never see fewer rows than were committed)."""
    out: list[tuple[Backend, Record]] = []
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
                record = Record.parse(be.read_meta(), path)
            except FileNotFoundError:
                be.close()
                raise CorruptStoreError(
                    f"part {i} of {n} of {root} has no readable zarr.json ({path}): its rows cannot be read; if its "
                    "writer has only just started, open the store once it has written its first commit"
                ) from None
            out.append((be, record))
    except BaseException:
        for be, _ in out:
            be.close()
        raise
    return out


def merge_records(root_record: Record, parts: list[Record], root: str) -> Record:
    """One record for the concatenation of ``parts`` (schemas must agree; counts add up). Its commit keeps each
    part's ``seq``, ``time`` and ``progress`` under ``parts``."""
    specs: dict[str, dict[str, Any]] = {"roles": dict(root_record.roles), "conds": dict(root_record.conds)}
    samples = root_record.samples
    counts: dict[str, dict[str, int]] = {"roles": {}, "conds": {}}
    n_samples = seq = 0
    nonfinite: dict[str, int] | None = None
    each: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        for kind, group in (("roles", part.roles), ("conds", part.conds)):
            for name, spec in group.items():
                have = specs[kind].setdefault(name, spec)
                if have != spec:
                    raise CorruptStoreError(f"part {i} of {root} stores {kind[:-1]} {name!r} as {spec.to_json()}, "
                                            f"others as {have.to_json()}")
        if part.samples is not None:
            if samples is None:
                samples = part.samples
            elif samples != part.samples:
                raise CorruptStoreError(f"part {i} of {root} has a different samples table schema")
        c = part.commit
        for kind, got in (("roles", c.roles), ("conds", c.conds)):
            for name, count in got.items():
                counts[kind][name] = counts[kind].get(name, 0) + count
        n_samples += c.samples
        seq += c.seq
        each.append({"seq": c.seq, "time": c.time, "progress": c.to_json()["progress"]})
        for key, count in (c.nonfinite or {}).items():
            nonfinite = nonfinite if nonfinite is not None else {}
            nonfinite[key] = nonfinite.get(key, 0) + count
    commit = Commit(seq, None, freeze(counts["roles"]), freeze(counts["conds"]), n_samples, None,
                    None if nonfinite is None else freeze(nonfinite), extra=freeze({"parts": each}))
    return dataclasses.replace(root_record, roles=freeze(specs["roles"]), conds=freeze(specs["conds"]),
                               samples=samples, commit=commit)
