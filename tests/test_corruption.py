"""Corruption campaign, seeded sample (issue 17 item 6; the full campaign is ``benchmarks/corruption_campaign.py``).

About 60 single corruptions per backend (Zarr directory, HDF5 file), spread over the corruption kinds and the bits
of the metadata record. Each case is read back in full (every array, row table, cond, samples, the record) against
the numpy reference it was written from, then verified. OK: a typed ``ActStoreError`` on open / read, a ``verify``
problem, or no effect (everything read equals the reference bit for bit). BAD: other values without an error or a
``verify`` problem, an untyped exception, a hang or a crash.

Two tests per (backend, kind): ``test_no_bad`` asserts 0 BAD (xfail(strict=False) where a known BAD kind awaits its
storage fix, named in ``KNOWN_BAD``); ``test_bad_only_known`` asserts that every BAD case matches a named known
failure, so an xfailed kind still catches a new way to fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.corruption_campaign import (
    BAD,
    FILE_KINDS,
    Case,
    Pristine,
    Result,
    build_pristine,
    fingerprint,
    plan_cases,
    read_and_compare,
    run_case,
)

SEED = 17
PER_KIND = {"zarr": 7, "hdf5": 8}
"""Random cases per file kind (7 kinds on Zarr, 6 on HDF5), plus ``META_BITS`` bits of the record: ~60 each."""
META_BITS = {"zarr": 11, "hdf5": 12}

KNOWN_BAD: dict[tuple[str, str], tuple[str, str]] = {}
"""(backend, kind) -> (regex over ``"<outcome> <detail>"`` that a known BAD case matches, reason)."""

_CACHE: dict[tuple[str, str], list[Result]] = {}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pristine]:
    import torch

    torch.set_num_threads(1)  # each case runs in a forked child
    root = Path(tmp_path_factory.mktemp("corruption"))
    return {backend: build_pristine(root / backend, backend, seed=SEED) for backend in ("zarr", "hdf5")}


def _results(pristine: dict[str, Pristine], backend: str, kind: str, work: Path) -> list[Result]:
    found = _CACHE.get((backend, kind))
    if found is None:
        p = pristine[backend]
        if kind == "metabit":
            cases = plan_cases(p, 0, SEED, meta_bits=META_BITS[backend])
        else:
            cases = plan_cases(p, PER_KIND[backend], SEED, kinds=(kind,))
        found = _CACHE[(backend, kind)] = [run_case(p, c, work) for c in cases]
        assert fingerprint(p) == p.digest, "a case changed the pristine store: the harness is broken"
    return found


def _params(*, xfail_known: bool) -> list[object]:
    out = []
    for backend, kinds in FILE_KINDS.items():
        for kind in (*kinds, "metabit"):
            known = KNOWN_BAD.get((backend, kind)) if xfail_known else None
            marks = [pytest.mark.xfail(strict=False, reason=known[1])] if known else []
            out.append(pytest.param(backend, kind, id=f"{backend}-{kind}", marks=marks))
    return out


def _show(results: list[Result]) -> str:
    return "\n".join(f"{r.outcome}: {r.case} -> {r.detail} (verify ok: {r.verify_ok})" for r in results)


def test_pristine_reads_back_as_its_reference(pristine: dict[str, Pristine], tmp_path: Path) -> None:
    """The harness itself: an uncorrupted copy reads back equal to the reference and verifies clean; a changed
    value in the copy is seen as a difference (so ``no_effect`` means something)."""
    for backend, p in pristine.items():
        control = run_case(p, Case(backend, "none"), tmp_path)
        assert control.outcome == "no_effect" and control.verify_ok, control
    p = pristine["zarr"]
    changed = dict(p.ref)
    changed["acts/decision/6"] = changed["acts/decision/6"].copy()
    changed["acts/decision/6"][3, 4] ^= 1
    wrong = Pristine(p.backend, p.path, changed, p.meta)
    diffs = read_and_compare(wrong, p.path)
    assert any(d.startswith("acts/decision/6: 1 of") for d in diffs), diffs


@pytest.mark.parametrize(("backend", "kind"), _params(xfail_known=True))
def test_no_bad(pristine: dict[str, Pristine], tmp_path: Path, backend: str, kind: str) -> None:
    results = _results(pristine, backend, kind, tmp_path)
    assert results, f"no {kind} case could be planned on {backend}"
    bad = [r for r in results if r.outcome in BAD]
    assert not bad, f"{len(bad)} of {len(results)} {backend} {kind} cases are BAD:\n{_show(bad)}"


@pytest.mark.parametrize(("backend", "kind"), _params(xfail_known=False))
def test_bad_only_known(pristine: dict[str, Pristine], tmp_path: Path, backend: str, kind: str) -> None:
    results = _results(pristine, backend, kind, tmp_path)
    known = KNOWN_BAD.get((backend, kind))
    new = [r for r in results if r.outcome in BAD and (known is None or not re.search(known[0], f"{r.outcome} {r.detail}"))]
    assert not new, f"{len(new)} {backend} {kind} cases fail in a way not named in KNOWN_BAD:\n{_show(new)}"


# HDF5 chunk B-tree / checksum-dataset damage that h5py reported as an untyped RuntimeError / OSError before 587c7de,
# found by the full campaign on the seed-0 store: (kind, offset in the .h5 file, bit).
H5_STRUCTURE_CASES = [("zero64", 38399, 3), ("zero64", 16466, 4), ("zero64", 9399, 7)]


def test_hdf5_structure_damage_is_typed(tmp_path: Path) -> None:
    p = build_pristine(tmp_path / "seed0", "hdf5", seed=0)
    for kind, offset, bit in H5_STRUCTURE_CASES:
        r = run_case(p, Case("hdf5", kind, "", offset, bit), tmp_path / "work")
        assert r.outcome == "error" and r.detail.startswith("CorruptStoreError"), r
        assert r.verify_ok is False, r
