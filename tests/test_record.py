"""The metadata record as typed, frozen objects: parsing is the validation (every malformed field a
CorruptStoreError naming it, the checksum checked), and the JSON it gives back is exactly what was stored."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from conftest import write_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actstore
from actstore import ActStore, ActStoreError, CorruptStoreError, FormatVersionError
from actstore.format._format import FORMAT_VERSION, META_KEY, record_checksum, seal_metadata
from actstore.format._record import (
    Commit,
    CondSpec,
    LayerSpec,
    Layout,
    Record,
    RoleSpec,
    SamplesSpec,
    freeze,
    thaw,
)

ROW = ["sample", "step", "position"]


def _meta() -> dict[str, Any]:
    """A small valid record (version 1: unsealed), as JSON."""
    m = Record.new({"a": 1}, Layout("lz4", 64, 16), "actstore test").to_json()
    m["roles"]["decision"] = {"columns": ROW, "layers": [{"layer": 6, "d": 8, "dtype": "bfloat16"}]}
    m["commit"]["roles"]["decision"] = 10
    return m


def _raw_records(path: Path) -> list[dict[str, Any]]:
    """The record(s) exactly as stored: the root's (and each part's) JSON object, key order kept."""
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            return [json.loads(f.attrs[META_KEY])]
    docs = [path / "zarr.json", *sorted(path.glob("parts/*/zarr.json"))]
    return [json.loads(p.read_bytes())["attributes"][META_KEY] for p in docs]


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("name", ["s.zarr", "s.h5"])
def test_stored_records_round_trip_byte_for_byte(tmp_path: Path, name: str) -> None:
    """Records written by the writer (roles, conds, samples with prompts, a resume with attrs) parse and seal back
    to the very JSON on disk, key order included; the reader's .meta is the record without its checksum."""
    path = tmp_path / name
    write_store(path, n_samples=6, steps=2, commit_interval_s=0.0)
    with actstore.create(path, resume=True, attrs={"note": "resumed"}) as w:
        w.commit({"i": 1})
    [raw] = _raw_records(path)
    record = Record.parse(raw, str(path))
    assert json.dumps(record.seal()) == json.dumps(raw)
    assert record.seal()["checksum"] == raw["checksum"] == record_checksum(raw)
    assert Record.parse(record.seal(), "x") == record
    assert record.samples is not None and record.conds and record.commit.progress == {"i": 1}
    with ActStore.open(path) as store:
        assert store.record == record
        assert json.dumps(store.meta) == json.dumps({k: v for k, v in raw.items() if k != "checksum"})
        assert store.commit == raw["commit"] and store.attrs == raw["attrs"]


def test_parts_records_round_trip_and_merge(tmp_path: Path) -> None:
    """A two-part store: the root (``parts``) and each part's record round-trip; the reader's merged record adds
    the counts and keeps each part's commit under ``commit.parts``."""
    path = tmp_path / "p.zarr"
    for i in range(2):
        with actstore.create(path, part=(i, 2), commit_interval_s=0.0) as w:
            w.append("r", {"sample": [i, i], "step": [0, 1], "position": [0, 0]}, {0: torch.ones(2, 3)})
            w.commit({"part": i})
    raws = _raw_records(path)
    assert len(raws) == 3 and raws[0]["parts"] == 2
    for raw in raws:
        assert json.dumps(Record.parse(raw, "x").seal()) == json.dumps(raw)
    with ActStore.open(path) as store:
        merged = store.record
        assert merged.parts == 2 and merged.commit.roles == {"r": 4}
        assert [p["progress"] for p in store.commit["parts"]] == [{"part": 0}, {"part": 1}]
        assert store.meta["commit"]["seq"] == sum(r["commit"]["seq"] for r in raws[1:])


def test_unknown_fields_are_kept_where_they_were() -> None:
    """Fields a foreign tool added (covered by the checksum) survive the round trip at every level."""
    m = _meta()
    m["tool"] = {"x": [1, 2]}
    m["layout"]["hint"] = "fast"
    m["roles"]["decision"]["note"] = 1
    m["roles"]["decision"]["layers"][0]["unit"] = "x"
    m["commit"]["who"] = "me"
    sealed = seal_metadata(m)
    record = Record.parse(copy.deepcopy(sealed), "x")
    assert record.extra == {"tool": {"x": (1, 2)}} and record.layout.extra == {"hint": "fast"}
    assert record.seal() == sealed


def test_new_record_is_version_one_until_sealed() -> None:
    record = Record.new({"a": [1]}, Layout("zstd", 32, 8, "crc32c"), "lib")
    assert record.format_version == 1 and record.commit == Commit()
    assert Record.parse(record.to_json(), "x") == record  # unsealed version 1: no checksum needed
    sealed = record.seal()
    assert sealed["format_version"] == FORMAT_VERSION and list(sealed)[-1] == "checksum"
    assert Record.parse(sealed, "x") == dataclasses.replace(record, format_version=FORMAT_VERSION)


# ------------------------------------------------------------------------------------------ frozen
def test_records_cannot_be_changed() -> None:
    record = Record.parse(seal_metadata(_meta()), "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.format_version = 9  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.layout.chunk_rows = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.roles["decision"].layers[0].d = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.roles["x"] = record.roles["decision"]  # type: ignore[index]
    with pytest.raises(TypeError):
        record.commit.roles["decision"] = 99  # type: ignore[index]
    with pytest.raises(TypeError):
        record.attrs["a"] = 2  # type: ignore[index]
    out = record.to_json()
    out["attrs"]["a"] = 2
    out["roles"]["decision"]["columns"].append("x")
    assert record.attrs == {"a": 1} and record.roles["decision"].columns == tuple(ROW)  # to_json copies


def test_changes_make_new_records() -> None:
    record = Record.parse(seal_metadata(_meta()), "x")
    cond = CondSpec(4, "float32")
    more = record.with_spec("cond", "adarms", cond).with_attrs({"b": 2})
    assert more.conds == {"adarms": cond} and more.attrs == {"a": 1, "b": 2}
    assert record.conds == {} and record.attrs == {"a": 1}
    samples = SamplesSpec(("sample",), 5, None, False, False, True)
    assert record.with_spec("samples", "samples", samples).samples == samples
    done = record.with_commit(Commit(seq=4, roles=freeze({"decision": 3})))
    assert done.commit.seq == 4 and record.commit.seq == 0


def test_freeze_and_thaw_are_inverse_on_json() -> None:
    value = {"a": [1, {"b": None, "c": [True, 1.5, "x"]}], "d": {}}
    frozen = freeze(value)
    assert thaw(frozen) == value and json.dumps(thaw(frozen)) == json.dumps(value)
    with pytest.raises(TypeError):
        frozen["a"][1]["b"] = 2


# ------------------------------------------------------------------------------------------ derived
def test_arrays_and_committed_rows() -> None:
    m = _meta()
    m["conds"]["adarms"] = {"d": 4, "dtype": "float32"}
    m["commit"]["conds"]["adarms"] = 3
    m["samples"] = {"columns": ["sample"], "prompt_len": 5, "prompt_bytes": None, "prompt_ids": False,
                    "instruction_mask": True, "prompt": False}
    m["commit"]["samples"] = 2
    record = Record.parse(m, "x")
    got = {a.key: (a.width, a.dtype.str, a.logical, n) for a, n in record.arrays()}
    assert got == {
        "rows/decision": (3, "<i8", None, 10),
        "acts/decision/6": (8, "<u2", "bfloat16", 10),
        "cond/adarms/rows": (2, "<i8", None, 3),
        "cond/adarms/acts": (4, "<f4", "float32", 3),
        "samples/table": (1, "<i8", None, 2),
        "samples/instruction_mask": (5, "|u1", None, 2),
    }
    assert record.committed("acts/nope/1") == 0 and record.committed("samples/prompt") == 2
    role = record.roles["decision"]
    assert role.layer(6) is role.layer("6") is role.layers[0] and role.layer(True) is None and role.layer(7) is None


# ------------------------------------------------------------------------------------------ validation
def test_checksum_covers_every_field_and_ignores_key_order() -> None:
    sealed = seal_metadata(_meta())
    reordered = dict(reversed(list(sealed.items())))
    assert Record.parse(reordered, "x") == Record.parse(sealed, "x")
    for mutate in (lambda m: m["commit"]["roles"].update(decision=11), lambda m: m["attrs"].update(a=2),
                   lambda m: m["layout"].update(chunk_rows=32), lambda m: m.update(created="x"),
                   lambda m: m.pop("checksum"), lambda m: m.update(format_version=1),
                   lambda m: m.update(checksum="sha256:" + "0" * 64), lambda m: m.update(checksum=5),
                   lambda m: m["roles"]["decision"]["layers"][0].update(d=9), lambda m: m.update(tool=1)):
        m = copy.deepcopy(sealed)
        mutate(m)
        with pytest.raises(CorruptStoreError, match="checksum"):
            Record.parse(m, "run.zarr")


def test_every_bit_flip_of_a_sealed_record_is_refused_or_harmless() -> None:
    """Flip each bit of the serialised record: every flip is refused with a typed error or parses to the very same
    record."""
    sealed = seal_metadata(_meta())
    want = Record.parse(copy.deepcopy(sealed), "x")
    raw = bytearray(json.dumps(sealed, indent=1).encode())
    refused = 0
    for i in range(len(raw)):
        for bit in range(8):
            raw[i] ^= 1 << bit
            try:
                got = Record.parse(json.loads(bytes(raw)), "x")
            except (ActStoreError, ValueError) as exc:
                assert isinstance(exc, (ActStoreError, json.JSONDecodeError)) or "utf-8" in str(exc)
                refused += 1
            else:
                assert got == want, (i, bit, bytes(raw[i - 20 : i + 20]))
            raw[i] ^= 1 << bit
    assert refused > 0.9 * 8 * len(raw)


def _samples(m: dict[str, Any]) -> dict[str, Any]:
    m["samples"] = {"columns": ["sample"], "prompt_len": 4, "prompt_bytes": 8, "prompt": True, "prompt_ids": True,
                    "instruction_mask": True}
    return m["samples"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.pop("roles"), "'roles' must be a JSON dict"),
        (lambda m: m.update(format_version="1"), "format_version must be a non-negative int"),
        (lambda m: m.update(attrs=[]), "'attrs' must be a JSON dict"),
        (lambda m: m.update(created=5), "created must be a string"),
        (lambda m: m["layout"].update(codec="pickle"), "unknown codec 'pickle'"),
        (lambda m: m["layout"].update(block_rows=10), "block_rows must divide chunk_rows"),
        (lambda m: m["layout"].update(chunk_rows=0), "layout.chunk_rows must be in"),
        (lambda m: m["layout"].update(blocksums="md5"), "layout.blocksums must be 'crc32c' or absent"),
        (lambda m: m["roles"]["decision"].update(columns=["step"]), "columns must start with"),
        (lambda m: m["roles"]["decision"].update(layers={}), "layers must be a list"),
        (lambda m: m["roles"]["decision"]["layers"][0].update(d=-1), "d must be in"),
        (lambda m: m["roles"]["decision"]["layers"][0].update(d=True), "d must be in"),
        (lambda m: m["roles"]["decision"]["layers"][0].update(dtype="object"), "dtype must be one of"),
        (lambda m: m["roles"]["decision"]["layers"][0].update(layer="../../etc"), "cannot be used"),
        (lambda m: m["roles"].update({"../x": m["roles"]["decision"]}), "cannot be used"),
        (lambda m: m["conds"].update(adarms={"d": 0, "dtype": "float32"}), "cond 'adarms' d must be in"),
        (lambda m: m.update(parts=0), "parts must be a positive int"),
        (lambda m: m.update(samples=[]), "samples must be an object or null"),
        (lambda m: _samples(m).update(columns=["x"]), "samples.columns must start with 'sample'"),
        (lambda m: _samples(m).update(prompt_len=0), "samples.prompt_len must be in"),
        (lambda m: _samples(m).update(prompt=1), "samples.prompt must be a bool"),
        (lambda m: _samples(m).update(prompt_bytes=None), "samples.prompt needs samples.prompt_bytes"),
        (lambda m: m["commit"].update(seq=-1), "commit.seq must be a non-negative int"),
        (lambda m: m["commit"]["roles"].update(other=3), "commit.roles names 'other'"),
        (lambda m: m["commit"]["roles"].update(decision=-5), r"commit.roles\['decision'\] must be in"),
        (lambda m: m["commit"].update(samples=None), "commit.samples must be a non-negative int"),
        (lambda m: m["commit"].update(progress=[1]), "commit.progress"),
        (lambda m: m["commit"].update(nonfinite={"a": -1}), "commit.nonfinite must map"),
        (lambda m: m["commit"].update(row_stats={"other": 1}), "commit.row_stats must map declared roles"),
        (lambda m: m["commit"].update(row_stats_crc32c={"decision": [2**32]}), "must be a list of crc32c values"),
    ],
)
def test_malformed_records_are_corrupt_naming_the_field(mutate: Any, message: str) -> None:
    """Each bad value is refused by the parser with a message naming it, in an unsealed record and in a sealed one
    edited afterwards (the schema is checked before the checksum: the edit is named, not just a mismatch)."""
    for seal in (False, True):
        m = seal_metadata(_meta()) if seal else _meta()
        mutate(m)
        with pytest.raises(CorruptStoreError, match=f"malformed actstore metadata in x: .*{message}"):
            Record.parse(m, "x")


def test_newer_format_version_and_non_objects_are_refused() -> None:
    m = _meta()
    m["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(FormatVersionError, match="upgrade actstore"):
        Record.parse(m, "x")
    with pytest.raises(CorruptStoreError, match="expected a JSON object, got list"):
        Record.parse([1, 2], "x")


# ------------------------------------------------------------------------------------------ hypothesis
_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_json = st.recursive(st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                     max_leaves=8)


@st.composite
def _records(draw: st.DrawFn) -> Record:
    block = draw(st.integers(1, 64))
    layout = Layout(draw(st.sampled_from(["lz4", "zstd", "none"])), block * draw(st.integers(1, 8)), block,
                    draw(st.sampled_from([None, "crc32c"])))
    dtypes = st.sampled_from(["bfloat16", "float16", "float32", "float64"])
    roles = {}
    for name in draw(st.lists(_names, max_size=3, unique=True)):
        extra = tuple(draw(st.lists(_names.filter(lambda c: c not in ROW), max_size=2, unique=True)))
        layers = tuple(LayerSpec(layer, draw(st.integers(1, 4096)), draw(dtypes))
                       for layer in draw(st.lists(st.integers(0, 40) | _names, max_size=3, unique_by=str)))
        roles[name] = RoleSpec((*ROW, *extra), layers)
    conds = {name: CondSpec(draw(st.integers(1, 64)), draw(dtypes)) for name in draw(st.lists(_names, max_size=2, unique=True))}
    samples = None
    if draw(st.booleans()):
        plen, pbytes = draw(st.none() | st.integers(1, 99)), draw(st.none() | st.integers(1, 999))
        samples = SamplesSpec(("sample",), plen, pbytes, pbytes is not None and draw(st.booleans()),
                              plen is not None and draw(st.booleans()), plen is not None and draw(st.booleans()))
    counts = st.integers(0, 10**9)
    roles_with_stats = draw(st.lists(st.sampled_from(sorted(roles)), unique=True)) if roles else []
    commit = Commit(
        draw(st.integers(0, 99)), draw(st.none() | st.just("2025-01-01T00:00:00Z")),
        freeze({r: draw(counts) for r in roles if draw(st.booleans())}),
        freeze({c: draw(counts) for c in conds if draw(st.booleans())}), draw(counts),
        freeze(draw(st.none() | st.dictionaries(st.text(max_size=4), _json, max_size=3))),
        draw(st.none() | st.just(freeze({"acts/x/0": 3}))),
        draw(st.none() | st.just(freeze({r: draw(st.integers(0, 9)) for r in roles_with_stats}))),
        draw(st.none() | st.just(freeze({r: tuple(draw(st.lists(st.integers(0, 2**32 - 1), max_size=3)))
                                          for r in roles_with_stats}))),
    )
    return Record(draw(st.integers(1, FORMAT_VERSION)), "2025-01-01T00:00:00Z", draw(st.none() | st.just("lib")),
                  freeze(draw(st.dictionaries(st.text(max_size=5), _json, max_size=4))), layout, freeze(roles),
                  freeze(conds), samples, commit, draw(st.none() | st.integers(1, 8)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_records())
def test_generated_records_round_trip(record: Record) -> None:
    """Any valid record: its JSON (with its checksum) parses back to itself, and sealing is stable."""
    doc = record.to_json()
    doc["checksum"] = record_checksum(doc)
    back = Record.parse(json.loads(json.dumps(doc)), "x")
    assert back == record
    assert json.dumps(back.to_json()) == json.dumps(record.to_json())
    sealed = record.seal()
    assert Record.parse(sealed, "x").seal() == sealed


def test_store_record_matches_numpy_reads(tmp_path: Path) -> None:
    """The typed record drives the reader: widths and dtypes from it give the rows the writer was given."""
    truth = write_store(tmp_path / "s.zarr", n_samples=5, steps=2)
    with ActStore.open(tmp_path / "s.zarr") as store:
        spec = store.record.roles["decision"]
        for e in spec.layers:
            got = store[e.layer, "decision"][:]
            assert got.shape[1] == e.d and str(got.dtype) == f"torch.{e.dtype}"
            np.testing.assert_array_equal(got.view(torch.uint16).numpy(),
                                          truth.acts[("decision", e.layer)].view(torch.uint16).numpy())
