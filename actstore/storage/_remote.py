"""Stores behind a URL (``s3://``, ``gs://``, ``memory://``, any fsspec protocol) through zarr's own store classes.

Credentials and endpoints come the usual way: the environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...)
or ``storage_options`` passed to ``create`` / ``ActStore.open`` (handed to fsspec unchanged).

Request pattern: a writer issues one PUT per chunk (``chunk_rows`` rows of one array, ~16 MiB at the defaults)
plus one small PUT per array shape change and one per commit; a shuffled or sequential reader issues one GET per
chunk; a random row read issues two ranged GETs (the chunk's index, then one block of ``block_rows`` rows).
Object stores have no locks: keep to one writer per store (or per part, see ``create(part=...)``).
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import ActStoreError, CorruptStoreError, NotAStoreError, StoreExistsError
from ..format._arraymeta import check_array_doc
from ..format._record import Record
from ._zarr import MAX_DOC_BYTES, ZarrBackend

__all__ = ["ZarrRemoteBackend", "is_url"]


def is_url(path: object) -> bool:
    """True for ``scheme://...`` paths other than ``file://``."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


class ZarrRemoteBackend(ZarrBackend):
    """A Zarr v3 hierarchy in any zarr ``Store`` opened from a URL."""

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None, read_only: bool) -> None:
        super().__init__(url)
        from zarr.core.buffer import default_buffer_prototype
        from zarr.storage import FsspecStore

        try:
            self._store = FsspecStore.from_url(url, storage_options=storage_options or {}, read_only=read_only)
        except (ImportError, ValueError) as exc:
            raise NotAStoreError(f"cannot open {url}: {exc} (is the fsspec driver, e.g. s3fs, installed?)") from exc
        self._proto = default_buffer_prototype()

    def _sync(self, coro: Any) -> Any:
        from zarr.core.sync import sync

        return sync(coro)

    @classmethod
    def create(cls, url: str, *, overwrite: bool, storage_options: dict[str, Any] | None) -> ZarrRemoteBackend:
        be = cls(url, storage_options=storage_options, read_only=False)
        if be._get("zarr.json") is not None:
            if not overwrite:
                raise StoreExistsError(f"{url} already exists; pass resume=True to append or overwrite=True to replace it")
            be._sync(be._store.delete_dir(""))
        return be

    def lock(self) -> None:
        """Object stores offer no lock; one writer per store is the caller's contract."""

    def _get(self, rel: str, limit: int | None = None) -> bytes | None:
        if limit is not None:
            size = self._size(rel)
            if size is None:
                return None
            if size > limit:
                raise CorruptStoreError(f"{self.path}/{rel} is {size} bytes, more than the {limit} bytes it can take; "
                                        "refusing to read it")
        buf = self._sync(self._store.get(rel, self._proto))
        return None if buf is None else buf.to_bytes()

    def _get_tail(self, rel: str, n: int) -> tuple[bytes, int] | None:
        from zarr.abc.store import SuffixByteRequest

        buf = self._sync(self._store.get(rel, self._proto, byte_range=SuffixByteRequest(n)))
        if buf is None:
            return None
        return buf.to_bytes(), int(self._sync(self._store.getsize(rel)))

    def _size(self, rel: str) -> int | None:
        try:
            return int(self._sync(self._store.getsize(rel)))
        except FileNotFoundError:
            return None

    def _get_range(self, rel: str, start: int, n: int) -> bytes:
        from zarr.abc.store import RangeByteRequest

        buf = self._sync(self._store.get(rel, self._proto, byte_range=RangeByteRequest(start, start + n)))
        return b"" if buf is None else buf.to_bytes()

    def _put(self, rel: str, data: bytes | list[Any], *, durable: bool) -> None:
        blob = data if isinstance(data, bytes) else b"".join(data)
        self._sync(self._store.set(rel, self._proto.buffer.from_bytes(blob)))

    def stored_bytes(self) -> int:
        return int(self._sync(self._store.getsize_prefix("")))

    def close(self) -> None:
        self._store.close()

    def check_array_docs(self, record: Record) -> list[tuple[str, str]]:
        """Every field of each array's ``zarr.json`` against the record, read with the same bounded reads."""
        out: list[tuple[str, str]] = []
        for spec, n_rows in record.arrays():
            try:
                raw = self._get(f"{spec.key}/zarr.json", MAX_DOC_BYTES)
                if raw is None:
                    out.append((spec.key, "its zarr.json is missing"))
                    continue
                doc = json.loads(raw)
            except ActStoreError as exc:
                out.append((spec.key, str(exc)))
                continue
            except (ValueError, RecursionError) as exc:
                out.append((spec.key, f"its zarr.json is not JSON: {exc!r}"))
                continue
            out += [(spec.key, problem) for problem in check_array_doc(doc, spec, n_rows, record.layout)]
        return out
