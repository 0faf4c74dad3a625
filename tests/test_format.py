"""Names, dtypes and the record checksum of the on-disk format (the record's schema: test_record.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore import InvalidNameError
from actstore.format._format import (
    FORMAT_VERSION,
    canonical_json,
    check_name,
    dtype_name,
    from_storage,
    record_checksum,
    seal_metadata,
    to_storage,
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


def test_seal_metadata_stamps_the_version_and_a_checksum_over_the_rest() -> None:
    """Sealing (what every write of the record goes through, ``Record.seal`` included) sets the current version and
    appends ``checksum`` = sha256 of the canonical JSON of every other field; key order and spelling do not count."""
    import hashlib
    import json

    meta = {"format_version": 1, "b": [1, "\u00e9"], "a": {"y": None, "x": 2}, "checksum": "stale"}
    sealed = seal_metadata(meta)
    assert list(sealed) == ["format_version", "b", "a", "checksum"] and meta["checksum"] == "stale"  # a copy
    body = {"a": {"x": 2, "y": None}, "b": [1, "\u00e9"], "format_version": FORMAT_VERSION}
    want = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert sealed["checksum"] == record_checksum(sealed) == "sha256:" + want
    assert canonical_json(dict(reversed(list(sealed.items())))) == canonical_json(sealed)
