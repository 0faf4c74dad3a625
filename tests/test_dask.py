"""Out-of-core analysis through dask / xarray, numpy as the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Truth

from actstore import ActStore

da = pytest.importorskip("dask.array")


def test_dask_mean_and_norms_match_numpy(written: Truth) -> None:
    store = ActStore.open(written.path)
    ref = written.acts[("decision", 10)].to(torch.float32).numpy()
    arr = store[10, "decision"].to_dask()
    assert arr.shape == ref.shape and arr.dtype == np.float32
    assert arr.numblocks[0] == -(-ref.shape[0] // 64)  # one task per store chunk
    np.testing.assert_allclose(arr.mean(axis=0).compute(), ref.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(da.linalg.norm(arr, axis=1).compute(), np.linalg.norm(ref, axis=1), rtol=1e-5)
    bits = store[10, "decision"].to_dask(dtype="stored").compute()
    np.testing.assert_array_equal(bits, written.acts[("decision", 10)].view(torch.uint16).numpy())


def test_dask_filtered_view_and_xarray(written: Truth) -> None:
    pytest.importorskip("xarray")
    store = ActStore.open(written.path)
    ref = written.acts[("decision", 6)].to(torch.float32).numpy()
    steps = written.rows["decision"]["step"]
    sub = store[6, "decision", 1].to_dask(chunk_rows=7)
    np.testing.assert_array_equal(sub.compute(), ref[steps == 1])
    xa = store[6, "decision"].to_xarray()
    per_step = xa.groupby("step").mean().compute()
    for s in range(4):
        np.testing.assert_allclose(per_step.sel(step=s).values, ref[steps == s].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_bad_dask_dtype(written: Truth) -> None:
    with pytest.raises(ValueError, match="valid choices"):
        ActStore.open(written.path)[6, "decision"].to_dask(dtype="int8")
