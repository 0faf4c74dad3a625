"""Producer-side checking of appended data against what the store holds: nothing bad reaches the writer thread."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import SchemaMismatchError
from ..format._format import check_name, to_storage

__all__ = ["as_index_column", "as_int_matrix", "check_acts", "encode_prompts", "natural", "pad_to", "row_matrix"]


def as_index_column(values: Any, name: str, n: int | None) -> np.ndarray:
    """An int64 column of length ``n`` (any length when ``n`` is None)."""
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise SchemaMismatchError(f"column {name!r} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iub":
        raise SchemaMismatchError(f"column {name!r} must hold integers, got dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise SchemaMismatchError(f"column {name!r} has {arr.shape[0]} rows but the activations have {n}")
    return arr.astype(np.int64, copy=False)


def row_matrix(
    rows: Mapping[str, Any], n: int, expected: list[str] | None, required: tuple[str, ...], what: str
) -> tuple[np.ndarray, list[str]]:
    """Stack a row table's columns into an (n, C) int64 matrix in the stored column order."""
    if not isinstance(rows, Mapping):
        raise SchemaMismatchError(f"rows of {what} must be a mapping of column name to values, got {type(rows).__name__}")
    missing = [c for c in required if c not in rows]
    if missing:
        raise SchemaMismatchError(f"rows of {what} lack the required columns {missing}; required are {list(required)}")
    if expected is None:
        extra = sorted(c for c in rows if c not in required)
        for c in extra:
            check_name(c, "column")
        columns = [*required, *extra]
    else:
        columns = expected
        unknown = sorted(set(rows) - set(columns))
        absent = [c for c in columns if c not in rows]
        if unknown or absent:
            raise SchemaMismatchError(
                f"rows of {what} must have exactly the columns {columns}; "
                f"missing {absent}, unexpected {unknown}"
            )
    mat = np.empty((n, len(columns)), dtype=np.int64)
    for j, c in enumerate(columns):
        mat[:, j] = as_index_column(rows[c], c, n)
    return mat, columns


def check_acts(values: Any, what: str, width: int | None, dtype: str | None) -> tuple[np.ndarray, str]:
    """Storage view of one activation matrix, checked against the width and dtype already stored."""
    arr, name = to_storage(values)
    if arr.ndim != 2:
        raise SchemaMismatchError(f"activations of {what} must be 2-D (rows, d), got shape {tuple(arr.shape)}")
    if width is not None and arr.shape[1] != width:
        raise SchemaMismatchError(f"activations of {what} have d={arr.shape[1]}, but the store holds d={width}")
    if dtype is not None and name != dtype:
        raise SchemaMismatchError(f"activations of {what} are {name}, but the store holds {dtype}")
    return arr, name



def natural(text: str) -> tuple[int, int | str]:
    return (0, int(text)) if text.isdigit() else (1, text)


def as_int_matrix(value: Any, what: str, n: int, dtype: type) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise SchemaMismatchError(f"{what} must have shape ({n}, L), got {arr.shape}")
    if arr.dtype.kind not in "iub":
        raise SchemaMismatchError(f"{what} must hold integers or bools, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def pad_to(mat: np.ndarray, width: int, what: str) -> np.ndarray:
    if mat.shape[1] > width:
        raise SchemaMismatchError(
            f"{what} is {mat.shape[1]} tokens wide but the store holds {width}; pad every batch to the same "
            "maximum prompt length (the first append fixes it)"
        )
    if mat.shape[1] == width:
        return mat
    out = np.zeros((mat.shape[0], width), dtype=mat.dtype)
    out[:, : mat.shape[1]] = mat
    return out


def encode_prompts(prompts: list[str], width: int) -> np.ndarray:
    out = np.zeros((len(prompts), width), dtype=np.uint8)
    for i, text in enumerate(prompts):
        if not isinstance(text, str):
            raise SchemaMismatchError(f"prompt {i} must be a str, got {type(text).__name__}")
        raw = text.encode("utf-8")
        if len(raw) > width or b"\0" in raw:
            raise SchemaMismatchError(
                f"prompt {i} is {len(raw)} UTF-8 bytes{' with a NUL' if b'{0}' in raw else ''}; "
                f"the store holds prompts of at most {width} bytes without NUL (StoreConfig.max_prompt_bytes)"
            )
        out[i, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out
