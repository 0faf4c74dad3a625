"""Each array's own metadata (its Zarr ``zarr.json`` or its HDF5 dataset) checked field by field against the record.

actstore reads go by the (checksummed) root record alone; other tools (zarr-python, tensorstore, h5py) go by each
array's own metadata. These checks make sure both say the same: a flipped digit in an array's chunk grid, codec
chain or dtype would otherwise make a plain zarr-python read silently wrong while ``actstore`` reads stay right.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ._codec import BlockCodec
from ._format import ArraySpec
from ._record import Layout, Record

__all__ = ["array_doc", "check_array_doc", "check_zarr_array_docs", "expected_array_doc"]

_MAX_DOC_BYTES = 1 << 20
"""Largest array ``zarr.json`` read (ours are under 2 KiB)."""


def array_doc(width: int, dtype: np.dtype, codec: BlockCodec, chunk_rows: int, block_rows: int) -> dict[str, Any]:
    """The zarr.json of one of our arrays: rows x width, sharded into chunks of blocks (see ``_codec``)."""
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [0, width],
        "data_type": np.dtype(dtype).name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk_rows, width]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [block_rows, width],
                    "codecs": codec.zarr_codecs(),
                    "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
                    "index_location": "end",
                },
            }
        ],
        "attributes": {},
        "storage_transformers": [],
    }



def expected_array_doc(spec: ArraySpec, layout: Layout) -> dict[str, Any]:
    """The ``zarr.json`` the writer makes for ``spec`` under ``layout`` (shape[0] = 0: rows are checked apart)."""
    chunk_rows, block_rows = layout.chunk_rows, layout.block_rows
    codec = BlockCodec(layout.codec, spec.dtype, checksum=True,
                       block_bytes=block_rows * spec.width * spec.dtype.itemsize)
    return array_doc(spec.width, spec.dtype, codec, chunk_rows, block_rows)


def _diff(path: str, got: Any, want: Any) -> str | None:
    """The first field where ``got`` differs from ``want``, as ``path: got ... expected ...``, or None."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"{path or 'document'} is {type(got).__name__}, expected an object"
        for key in sorted(set(want) | set(got)):
            sub = f"{path}.{key}" if path else key
            if key not in got:
                return f"{sub} is missing (expected {json.dumps(want[key])})"
            if key not in want:
                return f"{sub} is not expected (holds {json.dumps(got[key])[:80]})"
            found = _diff(sub, got[key], want[key])
            if found:
                return found
        return None
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return f"{path} is {json.dumps(got)[:120]}, expected {json.dumps(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            found = _diff(f"{path}[{i}]", g, w)
            if found:
                return found
        return None
    if type(got) is not type(want) or got != want:
        return f"{path} is {json.dumps(got)}, expected {json.dumps(want)}"
    return None


def check_array_doc(doc: object, spec: ArraySpec, n_rows: int, layout: Layout) -> list[str]:
    """Problems of one array's parsed ``zarr.json`` against the record (empty when it agrees): every field must be
    what the writer makes; ``shape`` must be ``[rows, width]`` with ``rows >= n_rows`` (the committed rows; a
    writer killed after growing an array and before its commit leaves more)."""
    want = expected_array_doc(spec, layout)
    if not isinstance(doc, dict):
        return [f"{spec.key}/zarr.json is {type(doc).__name__}, expected a JSON object"]
    shape = doc.get("shape")
    problems = []
    if (not isinstance(shape, list) or len(shape) != 2 or not all(type(x) is int for x in shape)):
        problems.append(f"{spec.key}/zarr.json field shape is {json.dumps(shape)[:80]}, expected [rows, {spec.width}]")
    else:
        if shape[1] != spec.width:
            problems.append(f"{spec.key}/zarr.json field shape[1] is {shape[1]}, the record says width {spec.width}")
        if shape[0] < n_rows:
            problems.append(f"{spec.key}/zarr.json field shape[0] is {shape[0]}, fewer than the {n_rows} committed rows")
        want["shape"] = shape if shape[1] == spec.width else want["shape"]
    rest = _diff("", {k: v for k, v in doc.items() if k != "shape"}, {k: v for k, v in want.items() if k != "shape"})
    if rest:
        problems.append(f"{spec.key}/zarr.json field {rest}")
    return problems


def check_zarr_array_docs(root: str | Path, record: Record) -> list[tuple[str, str]]:
    """``(array key, problem)`` for every array of a local Zarr store whose ``zarr.json`` is missing, unreadable or
    disagrees with the record. Never raises for a bad file."""
    out: list[tuple[str, str]] = []
    for spec, n in record.arrays():
        doc_path = Path(root) / spec.key / "zarr.json"
        try:
            if not doc_path.is_file() or doc_path.is_symlink():
                out.append((spec.key, f"{spec.key}/zarr.json is missing or not a regular file"))
                continue
            if doc_path.stat().st_size > _MAX_DOC_BYTES:
                out.append((spec.key, f"{spec.key}/zarr.json is {doc_path.stat().st_size} bytes, more than any array's"))
                continue
            doc = json.loads(doc_path.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:
            out.append((spec.key, f"{spec.key}/zarr.json cannot be read: {exc}"))
            continue
        out.extend((spec.key, p) for p in check_array_doc(doc, spec, n, record.layout))
    return out
