"""Fuzzing: malformed metadata and damaged chunk bytes thrown at ``ActStore.open`` and every read.

The only acceptable outcomes are correct data or an :class:`ActStoreError` (a damaged chunk: ``CorruptStoreError``
naming the array and the chunk); any other exception, a crash or a hang (an alarm after a few seconds) fails.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_crash import read_all

from actstore import ActStore, ActStoreError, CorruptStoreError
from actstore.tools._verify import verify

HANG_S = 5
FUZZ = settings(deadline=None, max_examples=60, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A small valid store (several chunks per array), its metadata, and everything it holds."""
    path = Path(tmp_path_factory.mktemp("fuzz")) / "good.zarr"
    write_store(path, n_samples=9, steps=2, horizon=4, prompt_len=5, d=8, layers=(6,), batch=4, chunk_rows=32, block_rows=8)
    meta = json.loads((path / "zarr.json").read_text())
    return path, meta, read_all(ActStore.open(path))


@contextmanager
def no_hang(seconds: int = HANG_S) -> Iterator[None]:
    def alarm(*_: object) -> None:
        raise TimeoutError(f"open + read took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def open_and_read(path: Path) -> dict[str, Any] | ActStoreError:
    """Open and read everything; the ActStoreError when one said the store is bad. Anything else propagates."""
    with no_hang():
        try:
            store = ActStore.open(path, cache_bytes=1 << 16)
            got = read_all(store)
            repr(store)
            store.steps  # noqa: B018 - reads the row tables
            for role in store.roles:
                if role == "decision" and "adarms" in store.conds:
                    store.cond("adarms", role=role)
            store.close()
            return got
        except ActStoreError as exc:
            return exc
        finally:
            verify(path)  # never raises either


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, dict):
            for col in value:
                np.testing.assert_array_equal(got[key][col], value[col])
        elif isinstance(value, list):
            assert got[key] == value
        else:
            np.testing.assert_array_equal(got[key], value)


def fresh(pristine: tuple[Path, dict[str, Any], dict[str, Any]], tmp_path: Path, n: list[int]) -> Path:
    n[0] += 1
    dst = tmp_path / f"case{n[0]}.zarr"
    shutil.copytree(pristine[0], dst)
    return dst


# --------------------------------------------------------------------------------------- metadata fuzz

JSON_LEAF = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(-3, 300)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["", "..", "../../etc", "/abs", "a\0b", "x\x1b", "bfloat16", "float32", "lz4", "decision",
                       "sample", "step", "zarr.json", "ünï", "6"])
)
JSON = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    if not path:
        return value
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


# Values that make numpy allocate absurd buffers before anything can be checked: real leaks, reported separately
# (test_schema_gaps_are_corrupt_store_errors); kept out of the general fuzz so it stays a regression test.
_SIZE_KEYS = {"chunk_rows", "block_rows", "d", "prompt_len", "prompt_bytes", "roles", "conds", "samples"}


def _is_size_path(path: tuple[Any, ...]) -> bool:
    return bool(path) and (path[-1] in _SIZE_KEYS or (len(path) >= 2 and path[-2] in ("roles", "conds") and "commit" in path))


@FUZZ
@given(data=st.data())
def test_fuzzed_metadata_gives_data_or_actstore_error(pristine: Any, tmp_path_factory: Any, data: st.DataObject) -> None:
    _, meta, want = pristine
    tmp = Path(tmp_path_factory.mktemp("m"))
    doc = copy.deepcopy(meta)
    inner = doc["attributes"]["actstore"]
    edits = data.draw(st.integers(1, 3))
    for _ in range(edits):
        paths = _paths(inner)
        where = data.draw(st.sampled_from(paths[1:]))
        value = data.draw(JSON)
        if _is_size_path(where) and isinstance(value, int) and not isinstance(value, bool):
            value = min(abs(value), 4096)
        if where[-1] in ("prompt_len", "prompt_bytes") and value is None:
            value = 3
        if where[-1] == "dtype" and isinstance(value, (list, dict)):
            value = str(value)
        inner = _set(inner, where, value, delete=data.draw(st.booleans()))
    doc["attributes"]["actstore"] = inner
    dst = tmp / "s.zarr"
    shutil.copytree(pristine[0], dst)
    (dst / "zarr.json").write_text(json.dumps(doc))
    open_and_read(dst)


@FUZZ
@given(raw=st.binary(max_size=300), cut=st.integers(0, 4000), mode=st.sampled_from(["bytes", "truncate", "splice", "deep"]))
def test_fuzzed_root_document_bytes(pristine: Any, tmp_path_factory: Any, raw: bytes, cut: int, mode: str) -> None:
    src = (pristine[0] / "zarr.json").read_bytes()
    if mode == "bytes":
        blob = raw
    elif mode == "truncate":
        blob = src[: cut % len(src)]
    elif mode == "splice":
        at = cut % len(src)
        blob = src[:at] + raw + src[at + len(raw):]
    else:
        blob = b"[" * (cut * 50) + b"]" * (cut * 50)
    dst = Path(tmp_path_factory.mktemp("b")) / "s.zarr"
    shutil.copytree(pristine[0], dst)
    (dst / "zarr.json").write_bytes(blob)
    open_and_read(dst)


# ------------------------------------------------------------------------------------------ chunk fuzz


def _chunks(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("c/*/0") if p.is_file())


@FUZZ
@given(data=st.data())
def test_damaged_chunk_is_corrupt_store_error_naming_it(pristine: Any, tmp_path_factory: Any, data: st.DataObject) -> None:
    path, _, want = pristine
    chunks = _chunks(path)
    target = data.draw(st.sampled_from(chunks))
    rel = target.relative_to(path)
    dst = Path(tmp_path_factory.mktemp("c")) / "s.zarr"
    shutil.copytree(path, dst)
    blob = bytearray((dst / rel).read_bytes())
    mode = data.draw(st.sampled_from(["flip", "truncate", "garbage", "delete", "empty", "swap"]))
    if mode == "flip":
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif mode == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif mode == "garbage":
        blob = bytearray(data.draw(st.binary(min_size=1, max_size=2 * len(blob))))
    elif mode == "empty":
        blob = bytearray()
    elif mode == "swap":  # a valid chunk of another array or position: checksums pass, shape may not
        other = data.draw(st.sampled_from([c for c in chunks if c != target]))
        blob = bytearray(other.read_bytes())
    if mode == "delete":
        (dst / rel).unlink()
    else:
        (dst / rel).write_bytes(bytes(blob))
    got = open_and_read(dst)
    array = str(rel.parent.parent.parent)
    chunk = int(rel.parent.name)
    if mode == "swap" and isinstance(got, ActStoreError):
        return  # a well-formed chunk moved elsewhere: its block sums fail (the error may name the chunk it came from)
    if not isinstance(got, ActStoreError):
        assert_same(got, want)  # the damage hit bytes no committed row needs (e.g. a padding-only block)
        return
    assert isinstance(got, CorruptStoreError), repr(got)
    assert re.search(rf"chunk {chunk}\)? of {array}\b", str(got)), str(got)
    report = verify(dst)
    assert not report.ok and any(p.array == array and p.chunk == chunk for p in report.problems), report.render()


# --------------------------------------------------------------------------------- leaks found by fuzzing


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["layout"].update(chunk_rows=2**62, block_rows=2**31),
        lambda m: m["roles"]["decision"]["layers"][0].update(d=2**50),
        lambda m: m["commit"]["roles"].update(decision=2**60),
        lambda m: m["roles"]["decision"]["layers"][0].update(dtype=["float32"]),
        lambda m: m["samples"].update(prompt_len=None),
    ],
    ids=["chunk_rows", "d", "commit-rows", "dtype-list", "prompt_len-null"],
)
def test_schema_gaps_are_corrupt_store_errors(pristine: Any, tmp_path: Path, edit: Any) -> None:
    doc = copy.deepcopy(pristine[1])
    edit(doc["attributes"]["actstore"])
    dst = tmp_path / "s.zarr"
    shutil.copytree(pristine[0], dst)
    (dst / "zarr.json").write_text(json.dumps(doc))
    open_and_read(dst)
