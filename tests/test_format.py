"""Names, dtypes and metadata validation of the on-disk format."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from actstore import CorruptStoreError, FormatVersionError, InvalidNameError
from actstore.format._format import (
    FORMAT_VERSION,
    check_name,
    committed_rows,
    dtype_name,
    from_storage,
    new_metadata,
    record_checksum,
    schema_arrays,
    seal_metadata,
    to_storage,
    validate_metadata,
)


@pytest.mark.parametrize("name", ["decision", "layer_14", 14, 0, "a.b-c", "X" * 128])
def test_good_names(name: object) -> None:
    assert check_name(name, "role") == str(name)


@pytest.mark.parametrize(
    "name", ["..", "../x", "/abs", "a/b", "", ".hidden", "-1", -1, "a\0b", "tab\tname", "x" * 129, "zarr.json", True, 1.5, None]
)
def test_bad_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidNameError):
        check_name(name, "role")


def test_bf16_storage_is_bit_exact_and_zero_copy() -> None:
    t = torch.randn(5, 3).to(torch.bfloat16)
    arr, name = to_storage(t)
    assert name == "bfloat16" and arr.dtype == np.uint16
    back = from_storage(arr, name)
    assert back.dtype == torch.bfloat16 and torch.equal(back.view(torch.uint16), t.view(torch.uint16))
    assert dtype_name(torch.float16) == "float16"
    with pytest.raises(ValueError, match="valid dtypes"):
        dtype_name(torch.int32)


def _meta() -> dict[str, Any]:
    m = new_metadata({"a": 1}, {"codec": "lz4", "chunk_rows": 64, "block_rows": 16}, "actstore test")
    m["roles"]["decision"] = {"columns": ["sample", "step", "position"], "layers": [{"layer": 6, "d": 8, "dtype": "bfloat16"}]}
    m["commit"]["roles"]["decision"] = 10
    return m


def test_valid_metadata_passes() -> None:
    m = _meta()
    assert m["format_version"] == 1  # unsealed: a version-1 record (no checksum), still read
    assert validate_metadata(copy.deepcopy(m), "x") == m
    sealed = seal_metadata(m)
    assert sealed["format_version"] == FORMAT_VERSION == 3 and sealed["checksum"].startswith("sha256:")
    assert validate_metadata(copy.deepcopy(sealed), "x") == {**m, "format_version": FORMAT_VERSION}
    assert "checksum" not in m  # sealing copies


def test_checksum_covers_every_field_and_ignores_key_order() -> None:
    sealed = seal_metadata(_meta())
    reordered = dict(reversed(list(sealed.items())))
    assert validate_metadata(reordered, "x")["commit"] == sealed["commit"]
    assert record_checksum(sealed) == sealed["checksum"]
    for mutate in (lambda m: m["commit"]["roles"].update(decision=11), lambda m: m["attrs"].update(a=2),
                   lambda m: m["layout"].update(chunk_rows=32), lambda m: m.update(created="x"),
                   lambda m: m.pop("checksum"), lambda m: m.update(format_version=1),
                   lambda m: m.update(checksum="sha256:" + "0" * 64), lambda m: m.update(checksum=5),
                   lambda m: m["roles"]["decision"]["layers"][0].update(d=9)):
        m = copy.deepcopy(sealed)
        mutate(m)
        with pytest.raises(CorruptStoreError, match="checksum"):
            validate_metadata(m, "run.zarr")


def test_every_bit_flip_of_a_sealed_record_is_refused_or_harmless() -> None:
    """Flip each bit of the serialised record (as the root zarr.json holds it): every flip is refused with a typed
    error or parses to the very same record."""
    import json

    from actstore import ActStoreError

    sealed = seal_metadata(_meta())
    raw = bytearray(json.dumps(sealed, indent=1).encode())
    same = refused = 0
    for i in range(len(raw)):
        for bit in range(8):
            raw[i] ^= 1 << bit
            try:
                doc = json.loads(bytes(raw))
                got = validate_metadata(doc, "x")
            except (ActStoreError, ValueError) as exc:
                assert isinstance(exc, (ActStoreError, json.JSONDecodeError)) or "utf-8" in str(exc)
                refused += 1
            else:
                assert got == validate_metadata(copy.deepcopy(sealed), "x"), (i, bit, bytes(raw[i - 20 : i + 20]))
                same += 1
            raw[i] ^= 1 << bit
    assert refused > 0.9 * 8 * len(raw)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.pop("roles"),
        lambda m: m.update(format_version="1"),
        lambda m: m["layout"].update(codec="pickle"),
        lambda m: m["layout"].update(block_rows=10),
        lambda m: m["roles"]["decision"].update(columns=["step"]),
        lambda m: m["roles"]["decision"]["layers"][0].update(d=-1),
        lambda m: m["roles"]["decision"]["layers"][0].update(dtype="object"),
        lambda m: m["roles"]["decision"]["layers"][0].update(layer="../../etc"),
        lambda m: m["roles"].update({"../x": m["roles"]["decision"]}),
        lambda m: m["commit"]["roles"].update(other=3),
        lambda m: m["commit"]["roles"].update(decision=-5),
        lambda m: m["commit"].update(progress=[1]),
    ],
)
def test_malformed_metadata_is_corrupt(mutate: Any) -> None:
    m = _meta()
    mutate(m)
    with pytest.raises(CorruptStoreError):
        validate_metadata(m, "x")


def test_newer_format_version_is_refused() -> None:
    m = _meta()
    m["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(FormatVersionError, match="upgrade actstore"):
        validate_metadata(m, "x")
    with pytest.raises(CorruptStoreError):
        validate_metadata([1, 2], "x")


def test_schema_arrays_and_committed_rows() -> None:
    m = _meta()
    m["conds"]["adarms"] = {"d": 4, "dtype": "float32"}
    m["commit"]["conds"]["adarms"] = 3
    m["samples"] = {"columns": ["sample"], "prompt_len": 5, "prompt_bytes": None, "prompt_ids": False,
                    "instruction_mask": True, "prompt": False}
    m["commit"]["samples"] = 2
    got = {a.key: (a.width, a.dtype.str, a.logical, n) for a, n in schema_arrays(m)}
    assert got == {
        "rows/decision": (3, "<i8", None, 10),
        "acts/decision/6": (8, "<u2", "bfloat16", 10),
        "cond/adarms/rows": (2, "<i8", None, 3),
        "cond/adarms/acts": (4, "<f4", "float32", 3),
        "samples/table": (1, "<i8", None, 2),
        "samples/instruction_mask": (5, "|u1", None, 2),
    }
    assert committed_rows("acts/nope/1", m["commit"]) == 0
