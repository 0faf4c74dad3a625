"""The store's metadata record as typed, frozen objects: parsed (and so validated) once, passed around as is.

:meth:`Record.parse` is the only way a JSON record becomes a :class:`Record`, and it is the validation: every
field is checked against the schema of ``docs/format.md`` and, for version >= 2, against the record's
``checksum``; a malformed record is a ``CorruptStoreError`` naming the field (``FormatVersionError`` for a newer
version). :meth:`Record.to_json` gives back the JSON form without ``checksum`` (``ActStore.meta``), :meth:`Record.seal`
the form that is written, in the writer's key order: byte for byte what earlier versions wrote.

Nothing inside a record can be changed (mappings are :class:`types.MappingProxyType`, sequences tuples, the caller's
JSON values frozen alike); changes make new records (``with_spec``, ``with_commit``, :func:`dataclasses.replace`).
Keys a foreign tool added (the checksum covers them) are kept in ``extra`` and written back after the known ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .._errors import CorruptStoreError, FormatVersionError, InvalidNameError
from ._format import (
    CHECKSUM_FIELD,
    DTYPES,
    FORMAT_VERSION,
    ROW_COLUMNS,
    SAMPLE_KEYS,
    ArraySpec,
    acts_key,
    check_name,
    cond_acts_key,
    cond_rows_key,
    now_iso,
    record_checksum,
    rows_key,
    seal_metadata,
)

__all__ = ["Commit", "CondSpec", "LayerSpec", "Layout", "Record", "RoleSpec", "SamplesSpec", "Spec", "freeze", "rows_of",
           "thaw"]

_MAX_ROWS = 1 << 24
"""Largest chunk_rows / block_rows a reader accepts (bounds the buffers it allocates)."""
_MAX_WIDTH = 1 << 20
"""Largest d, prompt_len, prompt_bytes a reader accepts."""
_MAX_ROWS_TOTAL = 1 << 40
"""Largest committed row count a reader accepts."""
_MAX_PARTS = 100_000
_I8 = np.dtype("<i8")
_U1 = np.dtype("u1")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_CODECS = ("lz4", "zstd", "none")


def freeze(value: Any) -> Any:
    """A JSON value that cannot be changed: objects as read-only mappings, arrays as tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain JSON form (dicts and lists, fresh copies) of a frozen value."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


# -------------------------------------------------------------------------------------------- the objects


@dataclass(frozen=True, slots=True)
class Layout:
    """How every array is chunked and encoded (``layout``)."""

    codec: str
    """Block codec: ``lz4``, ``zstd`` or ``none``."""
    chunk_rows: int
    """Rows per chunk (one file, the unit of writing and of shuffled reading)."""
    block_rows: int
    """Rows per block (the unit a random read decodes); divides ``chunk_rows``."""
    blocksums: str | None = None
    """``"crc32c"`` on Zarr stores that keep block sums (version 3), else None (field absent)."""
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """Fields this version does not know, kept as read."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"codec": self.codec, "chunk_rows": self.chunk_rows, "block_rows": self.block_rows}
        if self.blocksums is not None:
            out["blocksums"] = self.blocksums
        return {**out, **thaw(self.extra)}


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One layer of a role: its name (as given to ``append``), width and activation dtype."""

    layer: int | str
    """The layer: a non-negative int or a name."""
    d: int
    """Width (values per row)."""
    dtype: str
    """Activation dtype name (a key of ``DTYPES``)."""
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """Fields this version does not know, kept as read."""

    @property
    def storage_dtype(self) -> np.dtype:
        """The numpy dtype the values are stored as (bf16: its uint16 bits)."""
        return DTYPES[self.dtype][1]

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "d": self.d, "dtype": self.dtype, **thaw(self.extra)}


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """One role: its row-table columns and its layers."""

    columns: tuple[str, ...]
    """Row-table columns: ``sample``, ``step``, ``position``, then extra integer columns."""
    layers: tuple[LayerSpec, ...]
    """Its layers, in stored order."""
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """Fields this version does not know, kept as read."""

    def layer(self, layer: int | str) -> LayerSpec | None:
        """The entry of ``layer`` (an int matches its name too, ``14`` and ``"14"`` alike; bools never), or None."""
        for e in self.layers:
            if e.layer == layer or (str(e.layer) == str(layer) and not isinstance(layer, bool)):
                return e
        return None

    def arrays(self, name: str) -> list[ArraySpec]:
        """The role's arrays: its row table, then one activation array per layer."""
        return [ArraySpec(rows_key(name), len(self.columns), _I8)] + [
            ArraySpec(acts_key(name, str(e.layer)), e.d, e.storage_dtype, e.dtype) for e in self.layers
        ]

    def to_json(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "layers": [e.to_json() for e in self.layers], **thaw(self.extra)}


@dataclass(frozen=True, slots=True)
class CondSpec:
    """One conditioning array (e.g. ``adarms``): width and dtype."""

    d: int
    """Width."""
    dtype: str
    """Activation dtype name."""
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """Fields this version does not know, kept as read."""

    @property
    def storage_dtype(self) -> np.dtype:
        return DTYPES[self.dtype][1]

    def arrays(self, name: str) -> list[ArraySpec]:
        """Its (sample, step) table and its vectors."""
        return [ArraySpec(cond_rows_key(name), 2, _I8), ArraySpec(cond_acts_key(name), self.d, self.storage_dtype, self.dtype)]

    def to_json(self) -> dict[str, Any]:
        return {"d": self.d, "dtype": self.dtype, **thaw(self.extra)}


@dataclass(frozen=True, slots=True)
class SamplesSpec:
    """The per-sample table: its columns and which prompt arrays it keeps."""

    columns: tuple[str, ...]
    """``sample``, then extra integer columns."""
    prompt_len: int | None
    """Width of ``prompt_ids`` / ``instruction_mask`` (None when neither is kept)."""
    prompt_bytes: int | None
    """Width of ``prompt`` in UTF-8 bytes (None when it is not kept)."""
    prompt: bool
    """Whether the prompt text is kept."""
    prompt_ids: bool
    """Whether prompt token ids are kept."""
    instruction_mask: bool
    """Whether the instruction mask is kept."""
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """Fields this version does not know, kept as read."""

    def arrays(self) -> list[ArraySpec]:
        """The table, then the mask, ids and text arrays it keeps."""
        out = [ArraySpec(SAMPLE_KEYS["table"], len(self.columns), _I8)]
        for key, width, dtype in (("instruction_mask", self.prompt_len, _U1), ("prompt_ids", self.prompt_len, _I8),
                                  ("prompt", self.prompt_bytes, _U1)):
            if getattr(self, key):
                assert width is not None  # checked by the parser
                out.append(ArraySpec(SAMPLE_KEYS[key], width, dtype))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "prompt_len": self.prompt_len, "prompt_bytes": self.prompt_bytes,
                "prompt": self.prompt, "prompt_ids": self.prompt_ids, "instruction_mask": self.instruction_mask,
                **thaw(self.extra)}


@dataclass(frozen=True, slots=True)
class Commit:
    """What readers trust: the committed rows of every role, cond and of the samples table (``commit``)."""

    seq: int = 0
    """Commits written so far."""
    time: str | None = None
    """ISO-8601 UTC time of the commit (None before the first)."""
    roles: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    """Committed rows per role."""
    conds: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    """Committed rows per conditioning array."""
    samples: int = 0
    """Committed rows of the samples table."""
    progress: Mapping[str, Any] | None = None
    """The writer's JSON progress record (``writer.commit(progress)``), frozen."""
    nonfinite: Mapping[str, int] | None = None
    """NaN/Inf values per activation array (None: field absent)."""
    row_stats: Mapping[str, int] | None = None
    """Valid per-chunk statistics rows per role (``rowstats/{role}``; None: field absent)."""
    row_stats_crc32c: Mapping[str, tuple[int, ...]] | None = None
    """Per role, the crc32c of each statistics chunk over full row-table chunks (None: field absent)."""
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """Fields this version does not know, kept as read (a merged multi-part view keeps ``parts`` here)."""

    def rows(self, key: str) -> int:
        """Committed rows of array ``key``: its role's, cond's or the samples' count (0 when not committed)."""
        return rows_of(key, self.roles, self.conds, self.samples)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "time": self.time, "roles": dict(self.roles), "conds": dict(self.conds),
                               "samples": self.samples, "progress": thaw(self.progress)}
        if self.nonfinite is not None:
            out["nonfinite"] = dict(self.nonfinite)
        if self.row_stats is not None:
            out["row_stats"] = dict(self.row_stats)
        if self.row_stats_crc32c is not None:
            out["row_stats_crc32c"] = {k: list(v) for k, v in self.row_stats_crc32c.items()}
        return {**out, **thaw(self.extra)}


def rows_of(key: str, roles: Mapping[str, int], conds: Mapping[str, int], samples: int) -> int:
    """Rows of array ``key`` given row counts per role, per cond and of the samples table."""
    kind, _, rest = key.partition("/")
    if kind == "samples":
        return int(samples)
    return int((conds if kind == "cond" else roles).get(rest.split("/")[0], 0))


Spec = RoleSpec | CondSpec | SamplesSpec


@dataclass(frozen=True, slots=True)
class Record:
    """The whole metadata record of a store (or of one part of it). Build one with :meth:`parse` or :meth:`new`."""

    format_version: int
    """Version of the format the record was written in (``FORMAT_VERSION`` once sealed)."""
    created: str | None
    """ISO-8601 UTC creation time (None: field absent)."""
    library: str | None
    """The writing library and version (None: field absent)."""
    attrs: Mapping[str, Any]
    """The caller's attributes (frozen JSON)."""
    layout: Layout
    """Chunking and codec of every array."""
    roles: Mapping[str, RoleSpec]
    """Declared roles, in declaration order."""
    conds: Mapping[str, CondSpec]
    """Declared conditioning arrays."""
    samples: SamplesSpec | None
    """The samples table, or None when none was declared."""
    commit: Commit
    """The last commit."""
    parts: int | None = None
    """Number of parts of a multi-part store's root (None: a single store)."""
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """Top-level fields this version does not know, kept as read."""

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def new(cls, attrs: Mapping[str, Any], layout: Layout, library: str, *, parts: int | None = None) -> Record:
        """The record of an empty store, unsealed: a valid version-1 record until :meth:`seal` stamps it with the
        current version and its checksum (what every write of the record does)."""
        return cls(1, now_iso(), library, freeze(dict(attrs)), layout, _EMPTY, _EMPTY, None, Commit(), parts)

    @classmethod
    def parse(cls, obj: object, path: str) -> Record:
        """Check a parsed JSON record against the schema and its checksum and return it typed, or raise
        ``CorruptStoreError`` naming what is malformed (``FormatVersionError`` for a newer version)."""
        return _parse(obj, str(path))

    def with_spec(self, kind: str, name: str, spec: Spec) -> Record:
        """This record with a role / cond (by ``name``) or the samples table declared."""
        if kind == "samples":
            assert isinstance(spec, SamplesSpec)
            return dataclasses.replace(self, samples=spec)
        group = self.roles if kind == "role" else self.conds
        changed = freeze({**group, name: spec})
        return dataclasses.replace(self, **{"roles" if kind == "role" else "conds": changed})

    def with_commit(self, commit: Commit) -> Record:
        return dataclasses.replace(self, commit=commit)

    def with_attrs(self, attrs: Mapping[str, Any]) -> Record:
        """This record with ``attrs`` merged over its attributes."""
        return dataclasses.replace(self, attrs=freeze({**thaw(self.attrs), **attrs}))

    # ------------------------------------------------------------------------------------------ derived
    def arrays(self) -> list[tuple[ArraySpec, int]]:
        """Every array the record declares, with its committed row count."""
        out = [(a, self.commit.rows(a.key)) for role, spec in self.roles.items() for a in spec.arrays(role)]
        out += [(a, self.commit.rows(a.key)) for name, spec in self.conds.items() for a in spec.arrays(name)]
        if self.samples is not None:
            out += [(a, self.commit.samples) for a in self.samples.arrays()]
        return out

    def committed(self, key: str) -> int:
        """Committed rows of array ``key``."""
        return self.commit.rows(key)

    # ------------------------------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """The JSON form without ``checksum`` (fresh, mutable copies; the writer's key order)."""
        out: dict[str, Any] = {"format_version": self.format_version}
        if self.created is not None:
            out["created"] = self.created
        if self.library is not None:
            out["library"] = self.library
        out.update({
            "attrs": thaw(self.attrs),
            "layout": self.layout.to_json(),
            "roles": {k: v.to_json() for k, v in self.roles.items()},
            "conds": {k: v.to_json() for k, v in self.conds.items()},
            "samples": None if self.samples is None else self.samples.to_json(),
            "commit": self.commit.to_json(),
        })
        if self.parts is not None:
            out["parts"] = self.parts
        return {**out, **thaw(self.extra)}

    def seal(self) -> dict[str, Any]:
        """The JSON form as it is written: ``format_version`` set to ``FORMAT_VERSION`` and ``checksum`` last."""
        return seal_metadata(self.to_json())


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
    return freeze(rest) if rest else _EMPTY


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


def _parse(meta: object, path: str) -> Record:
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


def _parse_layout(layout: dict[str, Any], path: str) -> Layout:
    _expect(layout.get("codec") in _CODECS, path, f"unknown codec {layout.get('codec')!r}")
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
