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

from ._format import (
    DTYPES,
    SAMPLE_KEYS,
    ArraySpec,
    acts_key,
    cond_acts_key,
    cond_rows_key,
    now_iso,
    rows_key,
    seal_metadata,
)

__all__ = ["EMPTY", "Commit", "CondSpec", "LayerSpec", "Layout", "Record", "RoleSpec", "SamplesSpec", "Spec", "freeze",
           "rows_of", "thaw"]

_I8 = np.dtype("<i8")
_U1 = np.dtype("u1")
EMPTY: Mapping[str, Any] = MappingProxyType({})
"""The empty read-only mapping (a record's absent ``attrs``, ``roles``, ``extra`` ...)."""


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
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
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
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
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
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
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
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
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
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
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
    roles: Mapping[str, int] = field(default_factory=lambda: EMPTY)
    """Committed rows per role."""
    conds: Mapping[str, int] = field(default_factory=lambda: EMPTY)
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
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
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
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    """Top-level fields this version does not know, kept as read."""

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def new(cls, attrs: Mapping[str, Any], layout: Layout, library: str, *, parts: int | None = None) -> Record:
        """The record of an empty store, unsealed: a valid version-1 record until :meth:`seal` stamps it with the
        current version and its checksum (what every write of the record does)."""
        return cls(1, now_iso(), library, freeze(dict(attrs)), layout, EMPTY, EMPTY, None, Commit(), parts)

    @classmethod
    def parse(cls, obj: object, path: str) -> Record:
        """Check a parsed JSON record against the schema and its checksum and return it typed, or raise
        ``CorruptStoreError`` naming what is malformed (``FormatVersionError`` for a newer version)."""
        from ._parse import parse_record  # the parser builds records: it imports this module

        return parse_record(obj, str(path))

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
