"""The on-disk format: version, names, dtypes, array keys and the JSON metadata document.

Everything a reader trusts is parsed here, against a schema, from plain JSON. Nothing is unpickled or evaluated.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._errors import CorruptStoreError, FormatVersionError, InvalidNameError, SchemaMismatchError

FORMAT_VERSION = 3
"""Bumped on any change an older reader could misread. Version 2 adds the record's ``checksum``; version 3 the
block sums (``layout.blocksums``, :mod:`actstore.read._blocksums`). Version-1 and -2 records are still read."""

CHECKSUM_FIELD = "checksum"
"""Field of the metadata record holding ``sha256:<hex>`` of the canonical JSON of every other field."""
_CHECKSUM_PREFIX = "sha256:"

META_KEY = "actstore"
"""Name of the root attribute that holds the metadata document."""

NO_STEP = -1
"""``step`` value of rows that belong to no denoising step (prefix-only roles such as ``instruction``)."""

ROW_COLUMNS: tuple[str, ...] = ("sample", "step", "position")
"""Columns every role's row table has, in this order; extra integer columns follow."""

COND_COLUMNS: tuple[str, ...] = ("sample", "step")
"""Columns of every conditioning table."""

_MAX_ROWS = 1 << 24
"""Largest chunk_rows / block_rows a reader accepts (bounds the buffers it allocates)."""
_MAX_WIDTH = 1 << 20
"""Largest d, prompt_len, prompt_bytes a reader accepts."""
_MAX_ROWS_TOTAL = 1 << 40
"""Largest committed row count a reader accepts."""

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")

# name -> (torch dtype, numpy storage dtype). bfloat16 is stored as its uint16 bits.
DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "bfloat16": (torch.bfloat16, np.dtype("<u2")),
    "float16": (torch.float16, np.dtype("<f2")),
    "float32": (torch.float32, np.dtype("<f4")),
    "float64": (torch.float64, np.dtype("<f8")),
}
_TORCH_TO_NAME = {t: n for n, (t, _) in DTYPES.items()}


def check_name(name: object, what: str) -> str:
    """Return ``name`` as a safe path component, or raise :class:`InvalidNameError`."""
    if isinstance(name, bool) or not isinstance(name, (int, str)):
        raise InvalidNameError(f"{what} name must be a str or a non-negative int, got {name!r}")
    if isinstance(name, int) and name < 0:
        raise InvalidNameError(f"{what} {name!r} is negative; layers are numbered from 0")
    text = str(name)
    if not _NAME_RE.fullmatch(text) or text.endswith(".json"):
        raise InvalidNameError(
            f"{what} name {text!r} cannot be used: names are 1-128 characters of letters, digits, '_', '.', '-', "
            "do not start with '.' or '-', and contain no '/', '..' prefix, NUL or control characters"
        )
    return text


def dtype_name(dtype: torch.dtype | np.dtype) -> str:
    """The format's name for a torch or numpy floating dtype."""
    if isinstance(dtype, torch.dtype):
        name = _TORCH_TO_NAME.get(dtype)
    else:
        dt = np.dtype(dtype)
        name = dt.name if dt.name in DTYPES else None
    if name is None:
        raise SchemaMismatchError(f"activations of dtype {dtype} cannot be stored; valid dtypes are {list(DTYPES)}")
    return name


def to_storage(values: Any) -> tuple[np.ndarray, str]:
    """View a CPU tensor or numpy array of activations as its storage array (bf16 -> uint16 bits), no copy."""
    if isinstance(values, torch.Tensor):
        if values.device.type != "cpu":
            raise SchemaMismatchError(f"activations must be on the CPU, got a tensor on {values.device}")
        name = dtype_name(values.dtype)
        t = values.detach()
        if not t.is_contiguous():
            t = t.contiguous()
        if name == "bfloat16":
            return t.view(torch.uint16).numpy(), name
        return t.numpy(), name
    arr = np.asarray(values)
    if arr.dtype.name == "bfloat16":  # ml_dtypes
        return np.ascontiguousarray(arr).view("<u2"), "bfloat16"
    name = dtype_name(arr.dtype)
    return np.ascontiguousarray(arr, dtype=DTYPES[name][1]), name


def from_storage(arr: np.ndarray, name: str) -> torch.Tensor:
    """Turn a storage array back into a tensor of the recorded dtype, no copy."""
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if name == "bfloat16" else t


def acts_key(role: str, layer: str) -> str:
    return f"acts/{role}/{layer}"


def rows_key(role: str) -> str:
    return f"rows/{role}"


def cond_acts_key(name: str) -> str:
    return f"cond/{name}/acts"


def cond_rows_key(name: str) -> str:
    return f"cond/{name}/rows"


SAMPLE_KEYS = {
    "table": "samples/table",
    "instruction_mask": "samples/instruction_mask",
    "prompt_ids": "samples/prompt_ids",
    "prompt": "samples/prompt",
}


@dataclass(frozen=True)
class ArraySpec:
    """One stored array as the schema declares it."""

    key: str
    width: int
    dtype: np.dtype
    """Storage dtype."""
    logical: str | None = None
    """Activation dtype name for activation arrays (their NaN/Inf are counted), None for tables."""


def arrays_of(kind: str, name: str, spec: Mapping[str, Any]) -> list[ArraySpec]:
    """The arrays of one declared ``role`` / ``cond`` (by name) or of the ``samples`` table."""
    i8 = np.dtype("<i8")
    if kind == "role":
        return [ArraySpec(rows_key(name), len(spec["columns"]), i8)] + [
            ArraySpec(acts_key(name, str(e["layer"])), e["d"], DTYPES[e["dtype"]][1], e["dtype"]) for e in spec["layers"]
        ]
    if kind == "cond":
        return [
            ArraySpec(cond_rows_key(name), 2, i8),
            ArraySpec(cond_acts_key(name), spec["d"], DTYPES[spec["dtype"]][1], spec["dtype"]),
        ]
    out = [ArraySpec(SAMPLE_KEYS["table"], len(spec["columns"]), i8)]
    for key, width, dtype in (("instruction_mask", "prompt_len", np.dtype("u1")), ("prompt_ids", "prompt_len", i8),
                              ("prompt", "prompt_bytes", np.dtype("u1"))):
        if spec[key]:
            out.append(ArraySpec(SAMPLE_KEYS[key], spec[width], dtype))
    return out


def schema_arrays(meta: Mapping[str, Any]) -> list[tuple[ArraySpec, int]]:
    """Every array a (validated) metadata document declares, with its committed row count."""
    out = [(a, committed_rows(a.key, meta["commit"])) for role, spec in meta["roles"].items()
           for a in arrays_of("role", role, spec)]
    out += [(a, committed_rows(a.key, meta["commit"])) for name, spec in meta["conds"].items()
            for a in arrays_of("cond", name, spec)]
    if meta["samples"] is not None:
        out += [(a, int(meta["commit"]["samples"])) for a in arrays_of("samples", "samples", meta["samples"])]
    return out


def committed_rows(key: str, counts: Mapping[str, Any]) -> int:
    """Rows of array ``key`` in a commit record (or a writer's mark): its role's, cond's or the samples' count."""
    kind, _, rest = key.partition("/")
    if kind == "samples":
        return int(counts["samples"])
    return int(counts["conds" if kind == "cond" else "roles"].get(rest.split("/")[0], 0))


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_metadata(attrs: Mapping[str, Any], layout: Mapping[str, Any], library: str) -> dict[str, Any]:
    """The metadata document of an empty store, unsealed: a valid version-1 record until :func:`seal_metadata`
    stamps it with the current version and its checksum (what every write of the record must do)."""
    return {
        "format_version": 1,
        "created": now_iso(),
        "library": library,
        "attrs": dict(attrs),
        "layout": dict(layout),
        "roles": {},
        "conds": {},
        "samples": None,
        "commit": {"seq": 0, "time": None, "roles": {}, "conds": {}, "samples": 0, "progress": None},
    }


# ---------------------------------------------------------------------------------------------- checksum


def canonical_json(meta: Mapping[str, Any]) -> bytes:
    """The bytes the checksum covers: every field but ``checksum``, keys sorted, no whitespace, ASCII only (so
    two spellings of one value, e.g. an escaped and a raw ``é``, hash alike and any changed value does not)."""
    rest = {k: v for k, v in meta.items() if k != CHECKSUM_FIELD}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def record_checksum(meta: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of :func:`canonical_json`."""
    return _CHECKSUM_PREFIX + hashlib.sha256(canonical_json(meta)).hexdigest()


def seal_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``meta`` as it is written: ``format_version`` set to :data:`FORMAT_VERSION` and ``checksum`` last."""
    out = {k: v for k, v in meta.items() if k != CHECKSUM_FIELD}
    out["format_version"] = FORMAT_VERSION
    out[CHECKSUM_FIELD] = record_checksum(out)
    return out


def _check_checksum(meta: dict[str, Any], version: int, path: str) -> None:
    """Version >= 2 needs a checksum; any record that carries one (a flipped version digit included) is checked."""
    if CHECKSUM_FIELD not in meta:
        _expect(version < 2, path, f"format_version {version} requires a {CHECKSUM_FIELD!r} field; it is missing "
                                   "(the record was damaged or written by a foreign tool)")
        return
    got = meta[CHECKSUM_FIELD]
    _expect(isinstance(got, str) and got.startswith(_CHECKSUM_PREFIX), path,
            f"{CHECKSUM_FIELD} must be a string 'sha256:<hex>', got {got!r}")
    try:
        want = record_checksum(meta)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _fail(path, f"the record cannot be canonicalised for its checksum: {exc}") from None
    _expect(got == want, path, f"checksum mismatch (stored {got}, computed {want}): the record (schema, layout or "
                               "commit) was changed or damaged after it was written; nothing in it can be trusted")


# ---------------------------------------------------------------------------------------------- validation


def _fail(path: str, msg: str) -> CorruptStoreError:
    return CorruptStoreError(f"malformed actstore metadata in {path}: {msg}")


def _expect(cond: bool, path: str, msg: str) -> None:
    if not cond:
        raise _fail(path, msg)


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def validate_metadata(meta: object, path: str) -> dict[str, Any]:
    """Check a parsed metadata document against its checksum and the schema; return it without the ``checksum``
    field (callers hold unsealed records; :func:`seal_metadata` adds it back on write) or raise
    ``CorruptStoreError`` (``FormatVersionError`` for a newer version)."""
    _expect(isinstance(meta, dict), path, f"expected a JSON object, got {type(meta).__name__}")
    assert isinstance(meta, dict)
    version = meta.get("format_version")
    _expect(_is_count(version), path, f"format_version must be a non-negative int, got {version!r}")
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{path} has format_version {version}; this actstore reads versions up to {FORMAT_VERSION}: upgrade actstore"
        )
    for key, typ in (("attrs", dict), ("layout", dict), ("roles", dict), ("conds", dict), ("commit", dict)):
        _expect(isinstance(meta.get(key), typ), path, f"{key!r} must be a JSON {typ.__name__}")
    layout = meta["layout"]
    _expect(layout.get("codec") in ("lz4", "zstd", "none"), path, f"unknown codec {layout.get('codec')!r}")
    for key in ("chunk_rows", "block_rows"):
        _expect(_is_count(layout.get(key)) and 0 < layout[key] <= _MAX_ROWS, path, f"layout.{key} must be in 1..{_MAX_ROWS}")
    _expect(layout["chunk_rows"] % layout["block_rows"] == 0, path, "block_rows must divide chunk_rows")
    _expect(layout.get("blocksums") in (None, "crc32c"), path,
            f"layout.blocksums must be 'crc32c' or absent, got {layout.get('blocksums')!r}")
    for role, spec in meta["roles"].items():
        _check_name_in(role, "role", path)
        _expect(isinstance(spec, dict), path, f"role {role!r} must be an object")
        cols = spec.get("columns")
        _expect(
            isinstance(cols, list) and cols[:3] == list(ROW_COLUMNS) and all(isinstance(c, str) for c in cols),
            path,
            f"role {role!r} columns must start with {list(ROW_COLUMNS)}",
        )
        for c in cols:
            _check_name_in(c, "column", path)
        layers = spec.get("layers")
        _expect(isinstance(layers, list), path, f"role {role!r} layers must be a list")
        for entry in layers:
            _check_width_entry(entry, path, f"role {role!r} layer")
            _check_name_in(entry.get("layer"), "layer", path)
    for name, spec in meta["conds"].items():
        _check_name_in(name, "cond", path)
        _check_width_entry(spec, path, f"cond {name!r}")
    parts = meta.get("parts")
    _expect(parts is None or (_is_count(parts) and 0 < parts <= 100_000), path, "parts must be a positive int")
    samples = meta.get("samples")
    if samples is not None:
        _expect(isinstance(samples, dict), path, "samples must be an object or null")
        cols = samples.get("columns")
        _expect(isinstance(cols, list) and cols[:1] == ["sample"], path, "samples.columns must start with 'sample'")
        for c in cols:
            _check_name_in(c, "column", path)
        for key in ("prompt_len", "prompt_bytes"):
            val = samples.get(key)
            _expect(val is None or (_is_count(val) and 0 < val <= _MAX_WIDTH), path, f"samples.{key} must be in 1..{_MAX_WIDTH} or null")
        for key in ("prompt_ids", "instruction_mask", "prompt"):
            _expect(isinstance(samples.get(key), bool), path, f"samples.{key} must be a bool")
        for key, width in (("instruction_mask", "prompt_len"), ("prompt_ids", "prompt_len"), ("prompt", "prompt_bytes")):
            _expect(not samples[key] or samples.get(width) is not None, path, f"samples.{key} needs samples.{width}")
    commit = meta["commit"]
    _expect(_is_count(commit.get("seq")), path, "commit.seq must be a non-negative int")
    for key, names in (("roles", meta["roles"]), ("conds", meta["conds"])):
        counts = commit.get(key)
        _expect(isinstance(counts, dict), path, f"commit.{key} must be an object")
        for name, n in counts.items():
            _expect(name in names, path, f"commit.{key} names {name!r}, which the metadata does not declare")
            _expect(_is_count(n) and n <= _MAX_ROWS_TOTAL, path, f"commit.{key}[{name!r}] must be in 0..{_MAX_ROWS_TOTAL}")
    _expect(_is_count(commit.get("samples")), path, "commit.samples must be a non-negative int")
    _expect(commit.get("progress") is None or isinstance(commit["progress"], dict), path, "commit.progress")
    nonfinite = commit.get("nonfinite", {})
    _expect(
        isinstance(nonfinite, dict) and all(isinstance(k, str) and _is_count(v) for k, v in nonfinite.items()),
        path,
        "commit.nonfinite must map array names to counts",
    )
    for key in ("row_stats", "row_stats_crc32c"):
        got = commit.get(key, {})
        _expect(isinstance(got, dict) and all(k in meta["roles"] for k in got), path,
                f"commit.{key} must map declared roles to values")
    for role, crcs in commit.get("row_stats_crc32c", {}).items():
        _expect(isinstance(crcs, list) and all(_is_count(c) and c < 2**32 for c in crcs), path,
                f"commit.row_stats_crc32c[{role!r}] must be a list of crc32c values")
    _check_checksum(meta, version, path)  # after the schema: a hand-edited record is told what is malformed first
    return {k: v for k, v in meta.items() if k != CHECKSUM_FIELD}


def _check_name_in(name: object, what: str, path: str) -> None:
    try:
        check_name(name, what)
    except InvalidNameError as exc:
        raise _fail(path, str(exc)) from None


def _check_width_entry(entry: object, path: str, what: str) -> None:
    _expect(isinstance(entry, dict), path, f"{what} must be an object")
    assert isinstance(entry, dict)
    _expect(_is_count(entry.get("d")) and 0 < entry["d"] <= _MAX_WIDTH, path, f"{what} d must be in 1..{_MAX_WIDTH}")
    _expect(isinstance(entry.get("dtype"), str) and entry["dtype"] in DTYPES, path, f"{what} dtype must be one of {list(DTYPES)}")
