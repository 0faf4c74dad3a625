"""``ActView``: a lazy, numpy-indexable view of one (layer, role) array, optionally filtered to some rows.

Supported indexing, with numpy's semantics and result shapes (``tests/test_view.py`` checks them against numpy):

- rows (first axis): an int (negative counts from the end; the row axis is dropped), a slice (any step, also
  negative), a 1-D integer array / list / range / tensor (any order, repeats allowed), a 1-D boolean mask of the
  view's length, or ``...``;
- an optional column index (second axis), applied in memory after the rows are read: an int (``v[3, 5]`` is a
  0-d tensor), a slice, a 1-D integer array / list, or a boolean mask of length d; ``v[..., 5]`` and ``v[3, ...]``
  work too.

Not supported (:class:`StoreIndexError`, an ``IndexError``, says so): an array index on *both* axes (numpy would
pair them up element by element, h5py refuses them too; use ``v[rows][:, cols]``), ``None`` / ``np.newaxis``,
more than two indices, bare bools and non-integer arrays. Out-of-range rows or columns raise
:class:`StoreIndexError` naming the index and the size. Nothing is read until you index.

Results of ``v[key]`` are torch tensors in the stored dtype (bf16 stays bf16); ``v.numpy(key)`` gives the storage
array (bf16 as its uint16 bits). ``np.asarray(v)`` reads the whole view as numpy values (bf16 as float32, exact)
and ``torch.as_tensor(v)`` as a tensor in the stored dtype (through DLPack). Reading after ``store.close()``
raises :class:`~actstore.StoreClosedError`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import StoreIndexError
from ..format._format import DTYPES, from_storage
from ._blocks import ArrayReader
from ._rowindex import Selection

if TYPE_CHECKING:
    import torch

    from ._reader import ActStore

__all__ = ["ActView", "normalize_index"]


def normalize_index(key: Any, n: int, what: str = "row") -> slice | np.ndarray | int:
    """Turn a row key into an in-range ``int``, a ``slice`` (step 1, clipped) or an int64 index array."""
    size = f"a view of {n} rows" if what == "row" else f"rows of width d={n}"
    if isinstance(key, (bool, np.bool_)):
        raise StoreIndexError(f"a bare bool is not a {what} index (got {key!r}); use a boolean mask array of length {n}")
    if isinstance(key, (int, np.integer)):
        i = int(key)
        if not -n <= i < n:
            raise StoreIndexError(f"{what} {i} is out of range for {size}")
        return i + n if i < 0 else i
    if isinstance(key, slice):
        start, stop, step = key.indices(n)
        if step == 1:
            return slice(start, max(start, stop))
        return np.arange(start, stop, step, dtype=np.int64)
    if key is Ellipsis:
        return slice(0, n)
    torch = sys.modules.get("torch")  # a tensor key means torch is imported; never import it just to check
    if torch is not None and isinstance(key, torch.Tensor):
        key = key.detach().cpu().numpy()
    if isinstance(key, range):
        key = np.arange(key.start, key.stop, key.step, dtype=np.int64)
    try:
        arr = np.asarray(key)
    except (TypeError, ValueError) as exc:
        raise StoreIndexError(f"cannot index {what}s with {type(key).__name__}: {exc}") from None
    if arr.dtype == bool:
        if arr.ndim != 1 or arr.shape[0] != n:
            raise StoreIndexError(f"a boolean mask must be 1-D of length {n} (one entry per {what}), got shape {arr.shape}")
        return np.nonzero(arr)[0].astype(np.int64)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise StoreIndexError(
            f"{what}s can be indexed by an int, a slice, a 1-D int array or a boolean mask; got {arr.dtype} array "
            f"of shape {arr.shape}"
        )
    idx = arr.astype(np.int64, copy=False)
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < -n or hi >= n:
            bad = lo if lo < -n else hi
            raise StoreIndexError(f"{what} {bad} is out of range for {size}")
        if lo < 0:
            idx = np.where(idx < 0, idx + n, idx)
    return idx


def _normalize_cols(key: Any, d: int) -> Any:
    """Check a column key against the width ``d``; return what numpy should index the rows' columns with."""
    if isinstance(key, (bool, np.bool_)):
        raise StoreIndexError(f"a bare bool is not a column index (got {key!r}); use a boolean mask of length {d}")
    if isinstance(key, (int, np.integer)):
        j = int(key)
        if not -d <= j < d:
            raise StoreIndexError(f"column {j} is out of range for rows of width d={d}")
        return j
    if isinstance(key, slice) or key is Ellipsis:
        return slice(None) if key is Ellipsis else key
    idx = normalize_index(key, d, what="column")
    return idx


def split_key(key: Any) -> tuple[Any, Any]:
    """``(rows, cols)`` of a view key (``cols`` None when absent), numpy's ``...`` rules for a 2-D array."""
    if not isinstance(key, tuple):
        return key, None
    parts = list(key)
    if any(p is None for p in parts):
        raise StoreIndexError("None / np.newaxis is not supported in a view index; index, then reshape the tensor")
    if sum(p is Ellipsis for p in parts) > 1:
        raise StoreIndexError("an index can only have a single ellipsis ('...')")
    i = next((i for i, p in enumerate(parts) if p is Ellipsis), None)
    if i is not None:
        fill = 2 - (len(parts) - 1)
        if fill < 0:
            raise StoreIndexError(f"a view is 2-D (rows, d); got an index of {len(parts) - 1} parts and '...'")
        parts = parts[:i] + [slice(None)] * fill + parts[i + 1 :]
    if len(parts) > 2:
        raise StoreIndexError(f"too many indices: a view is 2-D (rows, d), got an index of {len(parts)} parts")
    if not parts:
        return slice(None), None
    return parts[0], (parts[1] if len(parts) == 2 else None)


class ActView:
    """Rows of ``store[layer, role]`` (or a filtered subset); see the module docstring for indexing."""

    def __init__(self, store: ActStore, layer: int | str, role: str, reader: ArrayReader, dtype: str,
                 rows: np.ndarray | Selection | None = None, label: str = "") -> None:
        self.store = store
        self.layer = layer
        self.role = role
        self._reader = reader
        self._dtype_name = dtype
        self._rows = rows
        """The role's rows of a filtered view, else None (all committed rows): a :class:`Selection` (chunk by
        chunk, from ``store.select``, O(chunks) memory) or an index array (from :meth:`filter`, any order)."""
        self._label = label

    @property
    def reader(self) -> ArrayReader:
        """The array reader behind the view (all committed rows, storage dtype): for loaders and dask, not a
        stable API."""
        return self._reader

    # --------------------------------------------------------------------------------------- shape
    def __len__(self) -> int:
        if self._rows is None:
            return self._reader.n_rows
        return self._rows.total if isinstance(self._rows, Selection) else int(self._rows.shape[0])

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
        """Positions of this view's rows in the role's row table (an array of the view's length)."""
        if self._rows is None:
            return np.arange(len(self), dtype=np.int64)
        return self._rows.row_ids() if isinstance(self._rows, Selection) else self._rows

    @property
    def filtered(self) -> bool:
        """Whether the view holds some of the role's rows (from ``store.select`` or :meth:`filter`), not all."""
        return self._rows is not None

    @property
    def selection(self) -> Selection | None:
        """The view's rows chunk by chunk (None for an unfiltered view; an index array that is not ascending
        and unique, from :meth:`filter`, has none)."""
        if self._rows is None or isinstance(self._rows, Selection):
            return self._rows
        ids = self._rows
        if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            return None
        return Selection.from_ids(self.store.index(self.role).bounds, ids)

    def __repr__(self) -> str:
        return (f"ActView(layer={self.layer!r}, role={self.role!r}{self._label}, shape={self.shape}, "
                f"dtype={self._dtype_name})")

    # -------------------------------------------------------------------------------------- reading
    def numpy(self, key: Any = slice(None)) -> np.ndarray:
        """Like indexing, but returns the storage numpy array (bf16 as uint16 bits)."""
        self.store.check_open()
        key, cols = split_key(key)
        norm = normalize_index(key, len(self))
        if cols is not None:
            cols = _normalize_cols(cols, self._reader.width)
            if isinstance(cols, np.ndarray) and not isinstance(norm, (int, slice)) and not isinstance(key, slice):
                raise StoreIndexError(
                    "an array index on both rows and columns is not supported (numpy would pair them element by "
                    "element, h5py refuses it); index the rows, then the columns: v[rows][:, cols]"
                )
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
        if self._rows is None:
            return idx
        return self._rows.base(idx) if isinstance(self._rows, Selection) else self._rows[idx]

    def __getitem__(self, key: Any) -> torch.Tensor:
        arr = self.numpy(key)
        if not arr.flags.c_contiguous or any(st < 0 for st in arr.strides):  # numpy calls a 1-element
            # array with a negative stride contiguous, torch refuses it; np.ascontiguousarray would make 0-d (1,)
            arr = arr.copy()
        return from_storage(arr, self._dtype_name)

    def __iter__(self) -> None:
        raise TypeError("a view is not iterated row by row; slice it (v[a:b]) or use store.loader(...)")

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """``np.asarray(view)``: every row as numpy values (bf16 as float32, exactly), always a new array."""
        if copy is False:
            raise ValueError("reading a view always makes a new array; np.asarray(view, copy=False) is impossible")
        arr = self.numpy()
        if self._dtype_name == "bfloat16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        """``torch.as_tensor(view)`` / ``np.from_dlpack``: every row, in the stored dtype, as a new CPU tensor."""
        return self[:].__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU

    @property
    def ndim(self) -> int:
        return 2

    def rows(self) -> dict[str, np.ndarray]:
        """The row table (sample, step, position, ...) of this view's rows (only their chunks are read; the
        whole table for an unfiltered view)."""
        index = self.store.index(self.role)
        if self._rows is None:
            return self.store.rows(self.role)
        if isinstance(self._rows, Selection):
            return index.rows_of(self._rows)
        return index.rows_at(self._rows)

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
        return ActView(self.store, self.layer, self.role, self._reader, self._dtype_name, self._base(idx),
                       self._label + label)

    def restrict(self, selection: Selection, label: str = "") -> ActView:
        """This (unfiltered) view limited to the rows of a selection of its role."""
        if self._rows is not None:
            raise StoreIndexError(f"restrict() applies to an unfiltered view; {self!r} is filtered already")
        return ActView(self.store, self.layer, self.role, self._reader, self._dtype_name, selection,
                       self._label + label)
