"""Out-of-core analysis: a view as a dask array (and an xarray DataArray with row-table coordinates).

Each dask chunk is one store chunk of rows; a task opens the store itself (once per process), so the graph runs on
the local threaded scheduler or on a ``dask.distributed`` cluster whose workers can reach the path.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ._view import ActView

__all__ = ["to_dask", "to_xarray"]

_OPEN: dict[tuple[str, str], Any] = {}
_OPEN_LOCK = threading.Lock()


class _ReadRows:
    """A picklable task body: rows ``[lo, hi)`` of a view, as ``dtype``."""

    def __init__(self, path: str, storage_options: dict[str, Any] | None, layer: Any, role: str,
                 rows: np.ndarray | None, dtype: str) -> None:
        self.path, self.storage_options, self.layer, self.role = path, storage_options, layer, role
        self.rows, self.dtype = rows, dtype

    def _view(self) -> ActView:
        from ._reader import ActStore

        key = (self.path, repr(sorted((self.storage_options or {}).items())))
        with _OPEN_LOCK:
            store = _OPEN.get(key)
            if store is None:
                store = _OPEN[key] = ActStore.open(self.path, storage_options=self.storage_options)
        view = store.view(self.layer, self.role)
        return view if self.rows is None else view.filter(self.rows)

    def __call__(self, lo: int, hi: int) -> np.ndarray:
        import torch

        t = self._view()[lo:hi]
        if self.dtype == "float32":
            return t.to(torch.float32).numpy()
        return t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def to_dask(view: ActView, *, dtype: str = "float32", chunk_rows: int | None = None) -> Any:
    """A lazy dask array of the view's rows: ``float32`` (default) or ``stored`` (bf16 as uint16 bits)."""
    import dask
    import dask.array as da

    from .._errors import SchemaMismatchError

    if dtype not in ("float32", "stored"):
        raise SchemaMismatchError(f"unknown dask dtype {dtype!r}; valid choices are ['float32', 'stored']")
    n, d = view.shape
    step = chunk_rows or view.reader.chunk_rows
    rows = view.row_index if view.filtered else None  # a filtered view: its row ids
    read = _ReadRows(view.store.path, view.store.storage_options, view.layer, view.role, rows, dtype)
    out_dtype = np.float32 if dtype == "float32" else view.reader.dtype
    blocks = []
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        blocks.append(da.from_delayed(dask.delayed(read)(lo, hi), shape=(hi - lo, d), dtype=out_dtype))
    if not blocks:
        return da.zeros((0, d), dtype=out_dtype)
    return da.concatenate(blocks, axis=0)


def to_xarray(view: ActView, **kwargs: Any) -> Any:
    """An ``xarray.DataArray`` (dims ``row``, ``dim``) over :func:`to_dask`, with the row table as coordinates."""
    import xarray as xr

    table = view.rows()
    coords = {name: ("row", values) for name, values in table.items()}
    return xr.DataArray(to_dask(view, **kwargs), dims=("row", "dim"), coords=coords,
                        name=f"{view.role}/{view.layer}", attrs={"store": view.store.path})
