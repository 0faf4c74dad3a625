"""ActView indexing matches numpy exactly (hypothesis), for plain and filtered views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actstore import ActStore, StoreIndexError


@pytest.fixture(scope="module")
def store_and_ref(tmp_path_factory: pytest.TempPathFactory) -> tuple[ActStore, np.ndarray]:
    path = Path(tmp_path_factory.mktemp("view")) / "v.zarr"
    truth = write_store(path, n_samples=30, steps=3, layers=(2,), d=8)
    ref = truth.acts[("decision", 2)].view(torch.uint16).numpy()
    return ActStore.open(path, cache_bytes=1 << 16), ref


def _keys(n: int) -> st.SearchStrategy:
    ints = st.integers(-n, n - 1)
    slices = st.builds(
        slice,
        st.none() | st.integers(-n - 5, n + 5),
        st.none() | st.integers(-n - 5, n + 5),
        st.none() | st.integers(-7, 7).filter(lambda s: s != 0),
    )
    arrays = st.lists(ints, max_size=60).map(lambda xs: np.array(xs, dtype=np.int64))
    masks = st.lists(st.booleans(), min_size=n, max_size=n).map(np.array)
    return ints | slices | arrays | masks


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_indexing_matches_numpy(store_and_ref: tuple[ActStore, np.ndarray], data: st.DataObject) -> None:
    store, ref = store_and_ref
    v = store[2, "decision"]
    n = len(v)
    key = data.draw(_keys(n))
    expect = ref[key]
    got = v.numpy(key)
    np.testing.assert_array_equal(got, expect)
    t = v[key]
    assert t.dtype == torch.bfloat16 and tuple(t.shape) == expect.shape


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_filtered_view_indexing(store_and_ref: tuple[ActStore, np.ndarray], data: st.DataObject) -> None:
    store, ref = store_and_ref
    step = data.draw(st.integers(0, 2))
    v = store[2, "decision", step]
    sub = ref[store.rows("decision")["step"] == step]
    assert len(v) == sub.shape[0]
    key = data.draw(_keys(len(v)))
    np.testing.assert_array_equal(v.numpy(key), sub[key])


def test_column_index_applied_after_rows(store_and_ref: tuple[ActStore, np.ndarray]) -> None:
    store, ref = store_and_ref
    v = store[2, "decision"]
    np.testing.assert_array_equal(v.numpy((slice(3, 40), slice(None, 4))), ref[3:40, :4])
    np.testing.assert_array_equal(v.numpy((np.array([5, 1]), 3)), ref[[5, 1], 3])


@pytest.mark.parametrize(
    "key, match",
    [
        (10**6, "out of range"),
        (-(10**6), "out of range"),
        (np.array([0, 10**6]), "out of range"),
        (np.array([True, False]), "boolean mask must be 1-D of length"),
        (np.array([0.5]), "1-D int array"),
        (np.zeros((2, 2), dtype=int), "1-D int array"),
        (True, "bare bool"),
        ((1, 2, 3), "index of 3 parts"),
        ("a", "1-D int array"),
    ],
)
def test_bad_indices_raise_index_error(store_and_ref: tuple[ActStore, np.ndarray], key: object, match: str) -> None:
    store, _ = store_and_ref
    v = store[2, "decision"]
    with pytest.raises(IndexError, match=match):
        v[key]
    with pytest.raises(StoreIndexError):
        v[key]


def test_lazy_view_metadata(store_and_ref: tuple[ActStore, np.ndarray]) -> None:
    store, ref = store_and_ref
    v = store[2, "decision"]
    assert v.shape == ref.shape and v.nbytes == ref.nbytes
    assert "layer=2" in repr(v)
    with pytest.raises(TypeError, match="not iterated"):
        iter(v)
