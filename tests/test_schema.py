"""Producer-side checks of appended columns and activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore import SchemaMismatchError
from actstore.write._schema import as_index_column, check_acts, row_matrix


def test_index_columns() -> None:
    np.testing.assert_array_equal(as_index_column(torch.tensor([1, 2]), "sample", 2), [1, 2])
    assert as_index_column(5, "sample", 1).tolist() == [5]
    assert as_index_column(np.array([True, False]), "flag", None).dtype == np.int64
    with pytest.raises(SchemaMismatchError, match="must hold integers"):
        as_index_column(np.array([1.5]), "sample", 1)
    with pytest.raises(SchemaMismatchError, match="1-D"):
        as_index_column(np.zeros((2, 2), int), "sample", None)


def test_row_matrix_orders_required_then_extra() -> None:
    mat, cols = row_matrix({"task": [7], "position": [2], "step": [1], "sample": [0]}, 1, None, ("sample", "step", "position"), "r")
    assert cols == ["sample", "step", "position", "task"] and mat.tolist() == [[0, 1, 2, 7]]
    with pytest.raises(SchemaMismatchError, match="mapping"):
        row_matrix([1, 2], 1, None, ("sample",), "r")  # type: ignore[arg-type]


def test_check_acts_accepts_numpy_and_torch() -> None:
    arr, name = check_acts(np.ones((2, 3), dtype=np.float32), "x", 3, "float32")
    assert name == "float32" and arr.shape == (2, 3)
    arr, name = check_acts(torch.ones(2, 3, dtype=torch.bfloat16).t().contiguous().t(), "x", None, None)
    assert name == "bfloat16" and arr.dtype == np.uint16 and arr.flags.c_contiguous
    with pytest.raises(SchemaMismatchError, match="on the CPU"):
        check_acts(torch.ones(2, 3, device="meta"), "x", None, None)
