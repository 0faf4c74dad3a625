"""The parser of the metadata record (:meth:`~actstore.format._record.Record.parse`): the JSON record checked field by
field against the schema of ``docs/format.md`` and its checksum, and built into the frozen objects of
:mod:`actstore.format._record`. Validation is the parser: nothing else checks a record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import CorruptStoreError, FormatVersionError, InvalidNameError
from ._codec import CODECS
from ._format import CHECKSUM_FIELD, DTYPES, FORMAT_VERSION, ROW_COLUMNS, check_name, record_checksum
from ._record import EMPTY, Commit, CondSpec, LayerSpec, Layout, Record, RoleSpec, SamplesSpec, freeze

__all__ = ["parse_record"]

_MAX_ROWS = 1 << 24
"""Largest chunk_rows / block_rows a reader accepts (bounds the buffers it allocates)."""
_MAX_WIDTH = 1 << 20
"""Largest d, prompt_len, prompt_bytes a reader accepts."""
_MAX_ROWS_TOTAL = 1 << 40
"""Largest committed row count a reader accepts."""
_MAX_PARTS = 100_000


# -------------------------------------------------------------------------------------------- the parser


def _fail(path: str, msg: str) -> CorruptStoreError:
    return CorruptStoreError(f"malformed actstore metadata in {path}: {msg}")


def _expect(cond: bool, path: str, msg: str) -> None:
    if not cond:
        raise _fail(path, msg)


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _extra(obj: Mapping[str, Any], known: tuple[str, ...]) -> Mapping[str, Any]:
    rest = {k: v for k, v in obj.items() if k not in known}
    return freeze(rest) if rest else EMPTY


def _check_name_in(name: object, what: str, path: str) -> None:
    try:
        check_name(name, what)
    except InvalidNameError as exc:
        raise _fail(path, str(exc)) from None


def _check_width_entry(entry: object, path: str, what: str) -> None:
    _expect(isinstance(entry, dict), path, f"{what} must be an object")
    assert isinstance(entry, dict)
    _expect(_is_count(entry.get("d")) and 0 < entry["d"] <= _MAX_WIDTH, path, f"{what} d must be in 1..{_MAX_WIDTH}")
    _expect(isinstance(entry.get("dtype"), str) and entry["dtype"] in DTYPES, path,
            f"{what} dtype must be one of {list(DTYPES)}")


def _check_checksum(meta: dict[str, Any], version: int, path: str) -> None:
    """Version >= 2 needs a checksum; any record that carries one (a flipped version digit included) is checked."""
    if CHECKSUM_FIELD not in meta:
        _expect(version < 2, path, f"format_version {version} requires a {CHECKSUM_FIELD!r} field; it is missing "
                                   "(the record was damaged or written by a foreign tool)")
        return
    got = meta[CHECKSUM_FIELD]
    _expect(isinstance(got, str) and got.startswith("sha256:"), path,
            f"{CHECKSUM_FIELD} must be a string 'sha256:<hex>', got {got!r}")
    try:
        want = record_checksum(meta)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _fail(path, f"the record cannot be canonicalised for its checksum: {exc}") from None
    _expect(got == want, path, f"checksum mismatch (stored {got}, computed {want}): the record (schema, layout or "
                               "commit) was changed or damaged after it was written; nothing in it can be trusted")


def parse_record(meta: object, path: str) -> Record:
    """See :meth:`Record.parse`."""
    _expect(isinstance(meta, dict), path, f"expected a JSON object, got {type(meta).__name__}")
    assert isinstance(meta, dict)
    version = meta.get("format_version")
    _expect(_is_count(version), path, f"format_version must be a non-negative int, got {version!r}")
    assert isinstance(version, int)
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{path} has format_version {version}; this actstore reads versions up to {FORMAT_VERSION}: upgrade actstore"
        )
    for key, typ in (("attrs", dict), ("layout", dict), ("roles", dict), ("conds", dict), ("commit", dict)):
        _expect(isinstance(meta.get(key), typ), path, f"{key!r} must be a JSON {typ.__name__}")
    for key in ("created", "library"):
        _expect(meta.get(key) is None or isinstance(meta[key], str), path, f"{key} must be a string")
    layout = _parse_layout(meta["layout"], path)
    _expect(layout.codec != "bytesplit" or version >= _BYTESPLIT_SINCE or version < 2, path,  # 1: unsealed
            f"codec 'bytesplit' is format_version {_BYTESPLIT_SINCE} or later; the record says {version}")
    roles = {role: _parse_role(role, spec, path) for role, spec in meta["roles"].items()}
    conds = {}
    for name, spec in meta["conds"].items():
        _check_name_in(name, "cond", path)
        _check_width_entry(spec, path, f"cond {name!r}")
        conds[name] = CondSpec(spec["d"], spec["dtype"], _extra(spec, ("d", "dtype")))
    parts = meta.get("parts")
    _expect(parts is None or (_is_count(parts) and 0 < parts <= _MAX_PARTS), path, "parts must be a positive int")
    samples = _parse_samples(meta.get("samples"), path)
    commit = _parse_commit(meta["commit"], roles, conds, path)
    _check_checksum(meta, version, path)  # after the schema: a hand-edited record is told what is malformed first
    known = ("format_version", "attrs", "layout", "roles", "conds", "samples", "commit", CHECKSUM_FIELD) + tuple(
        k for k in ("created", "library", "parts") if meta.get(k) is not None)  # an explicit null stays in extra
    return Record(version, meta.get("created"), meta.get("library"), freeze(meta["attrs"]), layout,
                  freeze(roles), freeze(conds), samples, commit, parts, _extra(meta, known))


_BYTESPLIT_SINCE = 4
"""The format version that introduced the ``bytesplit`` codec."""


def _parse_layout(layout: dict[str, Any], path: str) -> Layout:
    _expect(layout.get("codec") in CODECS, path, f"unknown codec {layout.get('codec')!r}")
    for key in ("chunk_rows", "block_rows"):
        _expect(_is_count(layout.get(key)) and 0 < layout[key] <= _MAX_ROWS, path, f"layout.{key} must be in 1..{_MAX_ROWS}")
    _expect(layout["chunk_rows"] % layout["block_rows"] == 0, path, "block_rows must divide chunk_rows")
    _expect(layout.get("blocksums") in (None, "crc32c"), path,
            f"layout.blocksums must be 'crc32c' or absent, got {layout.get('blocksums')!r}")
    known = ("codec", "chunk_rows", "block_rows") + (("blocksums",) if layout.get("blocksums") is not None else ())
    return Layout(layout["codec"], layout["chunk_rows"], layout["block_rows"], layout.get("blocksums"),
                  _extra(layout, known))


def _parse_role(role: str, spec: object, path: str) -> RoleSpec:
    _check_name_in(role, "role", path)
    _expect(isinstance(spec, dict), path, f"role {role!r} must be an object")
    assert isinstance(spec, dict)
    cols = spec.get("columns")
    _expect(isinstance(cols, list) and cols[:3] == list(ROW_COLUMNS) and all(isinstance(c, str) for c in cols), path,
            f"role {role!r} columns must start with {list(ROW_COLUMNS)}")
    for c in cols:
        _check_name_in(c, "column", path)
    layers = spec.get("layers")
    _expect(isinstance(layers, list), path, f"role {role!r} layers must be a list")
    entries = []
    for entry in layers:
        _check_width_entry(entry, path, f"role {role!r} layer")
        _check_name_in(entry.get("layer"), "layer", path)
        entries.append(LayerSpec(entry["layer"], entry["d"], entry["dtype"], _extra(entry, ("layer", "d", "dtype"))))
    return RoleSpec(tuple(cols), tuple(entries), _extra(spec, ("columns", "layers")))


def _parse_samples(samples: object, path: str) -> SamplesSpec | None:
    if samples is None:
        return None
    _expect(isinstance(samples, dict), path, "samples must be an object or null")
    assert isinstance(samples, dict)
    cols = samples.get("columns")
    _expect(isinstance(cols, list) and cols[:1] == ["sample"], path, "samples.columns must start with 'sample'")
    for c in cols:
        _check_name_in(c, "column", path)
    for key in ("prompt_len", "prompt_bytes"):
        val = samples.get(key)
        _expect(val is None or (_is_count(val) and 0 < val <= _MAX_WIDTH), path,
                f"samples.{key} must be in 1..{_MAX_WIDTH} or null")
    for key in ("prompt_ids", "instruction_mask", "prompt"):
        _expect(isinstance(samples.get(key), bool), path, f"samples.{key} must be a bool")
    for key, width in (("instruction_mask", "prompt_len"), ("prompt_ids", "prompt_len"), ("prompt", "prompt_bytes")):
        _expect(not samples[key] or samples.get(width) is not None, path, f"samples.{key} needs samples.{width}")
    known = ("columns", "prompt_len", "prompt_bytes", "prompt", "prompt_ids", "instruction_mask")
    return SamplesSpec(tuple(cols), samples.get("prompt_len"), samples.get("prompt_bytes"), samples["prompt"],
                       samples["prompt_ids"], samples["instruction_mask"], _extra(samples, known))


def _parse_commit(commit: dict[str, Any], roles: Mapping[str, RoleSpec], conds: Mapping[str, CondSpec],
                  path: str) -> Commit:
    _expect(_is_count(commit.get("seq")), path, "commit.seq must be a non-negative int")
    for key, names in (("roles", roles), ("conds", conds)):
        counts = commit.get(key)
        _expect(isinstance(counts, dict), path, f"commit.{key} must be an object")
        for name, n in counts.items():
            _expect(name in names, path, f"commit.{key} names {name!r}, which the metadata does not declare")
            _expect(_is_count(n) and n <= _MAX_ROWS_TOTAL, path, f"commit.{key}[{name!r}] must be in 0..{_MAX_ROWS_TOTAL}")
    _expect(_is_count(commit.get("samples")), path, "commit.samples must be a non-negative int")
    _expect(commit.get("progress") is None or isinstance(commit["progress"], dict), path, "commit.progress")
    _expect(commit.get("time") is None or isinstance(commit["time"], str), path, "commit.time must be a string or null")
    nonfinite = commit.get("nonfinite", {})
    _expect(isinstance(nonfinite, dict) and all(isinstance(k, str) and _is_count(v) for k, v in nonfinite.items()),
            path, "commit.nonfinite must map array names to counts")
    for key in ("row_stats", "row_stats_crc32c"):
        got = commit.get(key, {})
        _expect(isinstance(got, dict) and all(k in roles for k in got), path,
                f"commit.{key} must map declared roles to values")
    for role, n in commit.get("row_stats", {}).items():
        _expect(_is_count(n), path, f"commit.row_stats[{role!r}] must be a non-negative int")
    for role, crcs in commit.get("row_stats_crc32c", {}).items():
        _expect(isinstance(crcs, list) and all(_is_count(c) and c < 2**32 for c in crcs), path,
                f"commit.row_stats_crc32c[{role!r}] must be a list of crc32c values")
    known = ("seq", "time", "roles", "conds", "samples", "progress", "nonfinite", "row_stats", "row_stats_crc32c")
    return Commit(
        commit["seq"], commit.get("time"), freeze(commit["roles"]), freeze(commit["conds"]), commit["samples"],
        freeze(commit.get("progress")),
        None if "nonfinite" not in commit else freeze(nonfinite),
        None if "row_stats" not in commit else freeze(commit["row_stats"]),
        freeze(commit.get("row_stats_crc32c")),
        _extra(commit, known),
    )
