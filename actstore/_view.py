"""``ActView``: a lazy, numpy-indexable view of one (layer, role) array, optionally filtered to some rows.

Supported row indexing (first axis), with numpy semantics: an int (negative counts from the end), a slice (any
step, also negative), a 1-D integer array / list / range (any order, repeats allowed), a 1-D boolean mask of the
view's length. An optional second index selects columns and is applied in memory after the rows are read
(``v[10:20, :8]``). Out-of-range rows raise :class:`StoreIndexError` (an ``IndexError``); nothing is read until
you index. Results are torch tensors in the stored dtype (bf16 stays bf16).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._blocks import ArrayReader
from ._errors import StoreIndexError
from ._format import DTYPES, from_storage

if TYPE_CHECKING:
    from ._reader import ActStore

__all__ = ["ActView", "normalize_index"]


def normalize_index(key: Any, n: int) -> slice | np.ndarray | int:
    """Turn a row key into an in-range ``int``, a ``slice`` (step 1, clipped) or an int64 index array."""
    if isinstance(key, (bool, np.bool_)):
        raise StoreIndexError(f"a bare bool is not a row index (got {key!r}); use a boolean mask array of length {n}")
    if isinstance(key, (int, np.integer)):
        i = int(key)
        if not -n <= i < n:
            raise StoreIndexError(f"row {i} is out of range for a view of {n} rows")
        return i + n if i < 0 else i
    if isinstance(key, slice):
        start, stop, step = key.indices(n)
        if step == 1:
            return slice(start, max(start, stop))
        return np.arange(start, stop, step, dtype=np.int64)
    if key is Ellipsis:
        return slice(0, n)
    if isinstance(key, torch.Tensor):
        key = key.detach().cpu().numpy()
    if isinstance(key, range):
        key = np.arange(key.start, key.stop, key.step, dtype=np.int64)
    try:
        arr = np.asarray(key)
    except (TypeError, ValueError) as exc:
        raise StoreIndexError(f"cannot index rows with {type(key).__name__}: {exc}") from None
    if arr.dtype == bool:
        if arr.ndim != 1 or arr.shape[0] != n:
            raise StoreIndexError(f"a boolean mask must be 1-D of length {n}, got shape {arr.shape}")
        return np.nonzero(arr)[0].astype(np.int64)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise StoreIndexError(
            f"rows can be indexed by an int, a slice, a 1-D int array or a boolean mask; got {arr.dtype} array "
            f"of shape {arr.shape}"
        )
    idx = arr.astype(np.int64, copy=False)
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < -n or hi >= n:
            bad = lo if lo < -n else hi
            raise StoreIndexError(f"row {bad} is out of range for a view of {n} rows")
        if lo < 0:
            idx = np.where(idx < 0, idx + n, idx)
    return idx


class ActView:
    """Rows of ``store[layer, role]`` (or a filtered subset); see the module docstring for indexing."""

    def __init__(self, store: ActStore, layer: int | str, role: str, reader: ArrayReader, dtype: str,
                 rows: np.ndarray | None = None, label: str = "") -> None:
        self.store = store
        self.layer = layer
        self.role = role
        self._reader = reader
        self._dtype_name = dtype
        self._rows = rows
        """Indices into the role's rows when the view is filtered, else None (all committed rows)."""
        self._label = label

    # --------------------------------------------------------------------------------------- shape
    def __len__(self) -> int:
        return self._reader.n_rows if self._rows is None else int(self._rows.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self._reader.width)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self._dtype_name][0]

    @property
    def nbytes(self) -> int:
        return len(self) * self._reader.width * self._reader.dtype.itemsize

    @property
    def row_index(self) -> np.ndarray:
        """Positions of this view's rows in the role's row table."""
        return np.arange(len(self), dtype=np.int64) if self._rows is None else self._rows

    def __repr__(self) -> str:
        return (f"ActView(layer={self.layer!r}, role={self.role!r}{self._label}, shape={self.shape}, "
                f"dtype={self._dtype_name})")

    # -------------------------------------------------------------------------------------- reading
    def numpy(self, key: Any = slice(None)) -> np.ndarray:
        """Like indexing, but returns the storage numpy array (bf16 as uint16 bits)."""
        cols = None
        if isinstance(key, tuple):
            if len(key) != 2:
                raise StoreIndexError(f"a view is 2-D (rows, d); got an index of {len(key)} parts")
            key, cols = key
        norm = normalize_index(key, len(self))
        if isinstance(norm, slice) and self._rows is None:
            out = self._reader.read_range(norm.start, norm.stop)
        elif isinstance(norm, int):
            out = self._reader.read_rows(self._base(np.array([norm], dtype=np.int64)))[0]
        else:
            idx = np.arange(norm.start, norm.stop, dtype=np.int64) if isinstance(norm, slice) else norm
            out = self._reader.read_rows(self._base(idx))
        return out if cols is None else out[..., cols]

    def _base(self, idx: np.ndarray) -> np.ndarray:
        """Map view positions to positions in the role's rows."""
        return idx if self._rows is None else self._rows[idx]

    def __getitem__(self, key: Any) -> torch.Tensor:
        arr = self.numpy(key)
        return from_storage(np.ascontiguousarray(arr), self._dtype_name)

    def __iter__(self) -> None:
        raise TypeError("a view is not iterated row by row; slice it (v[a:b]) or use store.loader(...)")

    def rows(self) -> dict[str, np.ndarray]:
        """The row table (sample, step, position, ...) of this view's rows."""
        table = self.store.rows(self.role)
        return table if self._rows is None else {k: v[self._rows] for k, v in table.items()}

    def to_dask(self, *, dtype: str = "float32", chunk_rows: int | None = None) -> Any:
        """The rows as a lazy ``dask.array`` (one task per store chunk) for out-of-core analysis; needs dask."""
        from ._dask import to_dask

        return to_dask(self, dtype=dtype, chunk_rows=chunk_rows)

    def to_xarray(self, **kwargs: Any) -> Any:
        """An ``xarray.DataArray`` over :meth:`to_dask` with ``sample``/``step``/``position`` coordinates."""
        from ._dask import to_xarray

        return to_xarray(self, **kwargs)

    def filter(self, mask_or_index: np.ndarray, label: str = "") -> ActView:
        """A sub-view of the rows selected by a boolean mask or index array over this view."""
        idx = normalize_index(mask_or_index, len(self))
        if isinstance(idx, int):
            idx = np.array([idx], dtype=np.int64)
        elif isinstance(idx, slice):
            idx = np.arange(idx.start, idx.stop, dtype=np.int64)
        base = idx if self._rows is None else self._rows[idx]
        return ActView(self.store, self.layer, self.role, self._reader, self._dtype_name, base, self._label + label)
