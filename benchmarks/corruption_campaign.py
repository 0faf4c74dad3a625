"""Corruption campaign (issue 17 item 6): random single corruptions of a small store, each read back in full.

A small store is written with the public API (2 roles, 5 (layer, role) arrays in bf16 / float32, a cond, samples
with prompts, prompt ids and an instruction mask; 32-row chunks of 8-row blocks, so every array has several
chunks and blocks), for each backend (a ``.zarr`` directory and a ``.h5`` file), and the numpy reference of every
array is kept. Each case copies the pristine store, applies one corruption, then, in a forked child with a hang
alarm:

(a) opens the store and reads everything: the metadata record, every row table, every (layer, role) array (all
    rows, a random row index, one row), the cond rows and vectors (also joined to the decision rows), the samples
    table, prompts, prompt ids and mask; and compares each with the reference, bit for bit;
(b) runs ``actstore.verify``.

Outcomes. OK: ``error`` (a typed :class:`actstore.ActStoreError` on open or read), ``no_effect`` (every read
equals the reference exactly), ``verify`` (a read returned other values without an error, but ``verify`` reports
a problem). BAD: ``silent`` (other values, and ``verify`` says OK), ``untyped`` (an exception that is not an
``ActStoreError`` from open / read, or any exception from ``verify``, which promises never to raise), ``hang``
(a phase took more than 10 s) and ``crash`` (the child died).

Corruption kinds: ``bitflip`` (one bit at a random offset of a random file), ``zero64`` (64 bytes zeroed at a
random offset), ``truncate`` (to a random shorter length), ``delete`` (a random file), ``swap_chunk`` (Zarr: a
chunk file replaced by another chunk file of the same size), ``swap_block`` (two blocks of the same stored size
swapped: inside one Zarr chunk file, or two HDF5 chunks in the file), ``blockflip`` (one bit inside a stored block:
most of a small HDF5 file is the unused tail of its checksum datasets' chunks, which uniform offsets mostly hit),
and ``metabit`` (one bit of the metadata
record's JSON text as stored: the ``attributes.actstore`` object in the root ``zarr.json``, or the HDF5 root
attribute's bytes).

    python -m benchmarks.corruption_campaign --cases 500 --meta-bits 0 --seed 0

(``--meta-bits 0`` flips every bit of the record; ``N`` a random N of them.) Prints a tally (kind x outcome) per
backend and writes ``benchmarks/results/corruption.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BAD",
    "KINDS",
    "OUTCOMES",
    "Case",
    "Pristine",
    "Result",
    "build_pristine",
    "plan_cases",
    "run_case",
    "tally",
]

HANG_S = 10
"""A phase (open + read, or verify) slower than this is a hang."""
KINDS = ("bitflip", "zero64", "truncate", "delete", "swap_chunk", "swap_block", "blockflip", "metabit")
OUTCOMES = ("error", "verify", "no_effect", "silent", "untyped", "hang", "crash")
BAD = frozenset({"silent", "untyped", "hang", "crash"})
FILE_KINDS = {"zarr": KINDS[:7], "hdf5": ("bitflip", "zero64", "truncate", "delete", "swap_block", "blockflip")}
"""Random kinds per backend (``metabit`` cases are planned apart; an HDF5 store is one file, so no chunk files)."""

S, L, STEPS, H, D = 12, 6, 3, 4, 16
"""Samples, prompt length, denoising steps, action horizon, width."""
CHUNK_ROWS, BLOCK_ROWS = 32, 8


# ----------------------------------------------------------------------------------------------- the store
@dataclass
class Pristine:
    """A written store and its reference: what every read of it must return."""

    backend: str
    path: Path
    ref: dict[str, Any]
    """Name -> numpy array (bf16 as uint16 bits), dict of columns, or list (prompts)."""
    meta: dict[str, Any] | None = None
    """The record as the reader returns it for the pristine store (filled by :func:`build_pristine`)."""
    files: dict[str, int] = field(default_factory=dict)
    """Relative path (``""`` for an HDF5 file) -> size in bytes."""
    blocks: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    """File -> (offset, nbytes) of every stored block in it (Zarr shard entries, HDF5 chunks)."""
    record_span: tuple[str, int, int] | None = None
    """(file, first byte, end) of the metadata record's JSON text inside the stored file."""
    digest: str = ""
    """SHA-256 over every file of the pristine store (:func:`fingerprint`): cases must never change it."""


def _write(path: Path, backend: str, codec: str, seed: int) -> dict[str, Any]:
    """Write the store with ``actstore.create`` and return its numpy reference."""
    import torch

    import actstore

    rng = np.random.default_rng(seed)
    dec_layers = {6: torch.bfloat16, 10: torch.bfloat16, 14: torch.float32}
    ins_layers = {6: torch.bfloat16, 14: torch.bfloat16}
    parts: dict[str, list[np.ndarray]] = {}

    def keep(name: str, value: np.ndarray) -> None:
        parts.setdefault(name, []).append(value)

    def tensor(n: int, dtype: torch.dtype, name: str) -> torch.Tensor:
        t = torch.from_numpy(rng.standard_normal((n, D)).astype(np.float32)).to(dtype)
        keep(name, (t.view(torch.uint16) if dtype == torch.bfloat16 else t).numpy().copy())
        return t

    prompts: list[str] = []
    with actstore.create(path, attrs={"model": {"name": "campaign"}}, backend=backend, codec=codec,
                         chunk_rows=CHUNK_ROWS, block_rows=BLOCK_ROWS, max_prompt_bytes=96) as w:
        for b0 in range(0, S, 4):
            ids = 100 + np.arange(b0, b0 + 4, dtype=np.int64)
            lengths = rng.integers(1, L + 1, size=4)
            mask = np.arange(L)[None, :] < lengths[:, None]
            pids = rng.integers(0, 257_000, size=(4, L)).astype(np.int64) * mask
            text = [f"pick up the block {int(i)} \u00e9" * (1 + int(i) % 3) for i in ids]
            w.append_samples(ids, prompt=text, prompt_ids=pids, instruction_mask=mask, episode=ids // 3)
            keep("samples/table", np.stack([ids, ids // 3], axis=1))
            keep("samples/instruction_mask", mask)
            keep("samples/prompt_ids", pids)
            prompts += text
            s_i, p_i = np.nonzero(mask)
            rows = {"sample": ids[s_i], "step": np.full(s_i.size, actstore.NO_STEP), "position": p_i}
            keep("rows/instruction", np.stack([rows["sample"], rows["step"], rows["position"]], axis=1))
            w.append("instruction", rows=rows, acts={k: tensor(s_i.size, t, f"acts/instruction/{k}")
                                                      for k, t in ins_layers.items()})
            for step in range(STEPS):
                n = 4 * H
                rows = {"sample": np.repeat(ids, H), "step": np.full(n, step), "position": np.tile(np.arange(H), 4)}
                keep("rows/decision", np.stack([rows["sample"], rows["step"], rows["position"]], axis=1))
                w.append("decision", rows=rows, acts={k: tensor(n, t, f"acts/decision/{k}") for k, t in dec_layers.items()})
                w.append_cond("adarms", rows={"sample": ids, "step": np.full(4, step)},
                              acts=tensor(4, torch.float32, "cond/adarms/acts"))
                keep("cond/adarms/rows", np.stack([ids, np.full(4, step)], axis=1))
    ref: dict[str, Any] = {k: np.concatenate(v) for k, v in parts.items()}
    ref["samples/prompt"] = prompts
    ref["samples/instruction_mask"] = ref["samples/instruction_mask"].astype(bool)
    # the cond joined to the decision rows, by (sample, step), independently of the reader's join
    pos = {(int(s), int(t)): i for i, (s, t) in enumerate(ref["cond/adarms/rows"])}
    dec = ref["rows/decision"]
    ref["cond/adarms@decision"] = ref["cond/adarms/acts"][[pos[int(s), int(t)] for s, t, _ in dec]]
    pick = np.random.default_rng(seed + 1)
    for key in [k for k in ref if k.startswith("acts/")]:
        n = ref[key].shape[0]
        ref[f"{key}@idx"] = pick.integers(0, n, size=9)
    return ref


def _shard_blocks(blob: bytes, per_chunk: int) -> list[tuple[int, int]]:
    """(offset, nbytes) of the present blocks of a Zarr sharding_indexed chunk (index at the end)."""
    size = per_chunk * 16 + 4
    if len(blob) < size:
        return []
    raw = blob[-size:-4]
    out = []
    for i in range(per_chunk):
        off, nbytes = struct.unpack_from("<QQ", raw, 16 * i)
        if off != 2**64 - 1:
            out.append((off, nbytes))
    return out


def _record_span(text: bytes, key: bytes) -> tuple[int, int]:
    """Byte range of the JSON value of the first ``"actstore":`` key in ``text`` (the metadata record)."""
    at = text.index(b'"' + key + b'":') + len(key) + 3
    while text[at : at + 1] in (b" ", b"\n", b"\t", b"\r"):
        at += 1
    _value, end = json.JSONDecoder().raw_decode(text.decode("latin-1"), at)
    return at, end


def build_pristine(root: Path, backend: str, *, codec: str = "lz4", seed: int = 0) -> Pristine:
    """Write the store for ``backend`` under ``root``, its reference, and the map of its files and blocks."""
    path = root / ("pristine.zarr" if backend == "zarr" else "pristine.h5")
    ref = _write(path, backend, codec, seed)
    p = Pristine(backend, path, ref)
    if backend == "zarr":
        for f in sorted(path.rglob("*")):
            if f.is_file():
                rel = str(f.relative_to(path))
                p.files[rel] = f.stat().st_size
                if "/c/" in rel:  # block sums (blocksums/...) are chunks of one block
                    per_chunk = 1 if rel.startswith("blocksums/") else CHUNK_ROWS // BLOCK_ROWS
                    p.blocks[rel] = _shard_blocks(f.read_bytes(), per_chunk)
        text = (path / "zarr.json").read_bytes()
        p.record_span = ("zarr.json", *_record_span(text, b"actstore"))
    else:
        import h5py

        p.files[""] = path.stat().st_size
        blocks = []
        with h5py.File(path, "r", locking=False) as f:
            record = f.attrs["actstore"]
            record = record if isinstance(record, bytes) else str(record).encode("utf-8")

            def visit(_name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset) and obj.chunks is not None:
                    for i in range(obj.id.get_num_chunks()):
                        info = obj.id.get_chunk_info(i)
                        blocks.append((int(info.byte_offset), int(info.size)))

            f.visititems(visit)
        p.blocks[""] = sorted(blocks)
        data = path.read_bytes()
        at = data.find(record)
        if at < 0 or data.find(record, at + 1) >= 0:
            raise RuntimeError(f"the metadata record is not stored once, verbatim, in {path}")
        p.record_span = ("", at, at + len(record))
    p.digest = fingerprint(p)
    control = run_case(p, Case(backend, "none"), root / "control")
    if control.outcome != "no_effect" or not control.verify_ok:
        raise RuntimeError(f"the pristine {backend} store does not read back as its reference: {control}")
    p.meta = control.meta
    return p


def fingerprint(p: Pristine) -> str:
    """SHA-256 over the names and bytes of every file of the pristine store."""
    h = hashlib.sha256()
    for rel in sorted(p.files):
        h.update(rel.encode() + b"\0" + (p.path / rel if rel else p.path).read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One corruption: ``kind`` applied to ``target`` (a path relative to the store, ``""`` for an HDF5 file)."""

    backend: str
    kind: str
    target: str = ""
    offset: int = 0
    """Byte offset (flips, zero-fill, the first swapped block) or the new length (truncation)."""
    bit: int = 0
    other: str = ""
    """The chunk file swapped in (``swap_chunk``)."""
    other_offset: int = 0
    """The second swapped block (``swap_block``)."""
    length: int = 0
    """Bytes swapped (``swap_block``)."""


def _random_case(p: Pristine, kind: str, rng: np.random.Generator) -> Case | None:
    files = sorted(p.files)
    if kind in ("bitflip", "zero64", "truncate", "delete"):
        target = files[int(rng.integers(len(files)))]
        size = p.files[target]
        if size == 0 and kind != "delete":
            return None
        if kind == "delete":
            return Case(p.backend, kind, target)
        if kind == "truncate":
            return Case(p.backend, kind, target, int(rng.integers(0, size)))
        return Case(p.backend, kind, target, int(rng.integers(0, max(size, 1))), int(rng.integers(8)))
    if kind == "swap_chunk":
        chunks = [f for f in files if "/c/" in f]
        target = chunks[int(rng.integers(len(chunks)))]
        mine = (p.path / target).read_bytes()
        same = [f for f in chunks if p.files[f] == p.files[target] and (p.path / f).read_bytes() != mine]
        if not same:
            return None
        return Case(p.backend, kind, target, other=same[int(rng.integers(len(same)))])
    if kind == "swap_block":
        data = {f: (p.path / f).read_bytes() for f in p.blocks}
        pairs = []
        for f, blocks in p.blocks.items():
            for i, (a, n) in enumerate(blocks):
                for b, m in blocks[i + 1 :]:
                    if n == m and data[f][a : a + n] != data[f][b : b + m]:
                        pairs.append((f, a, b, n))
        if not pairs:
            return None
        f, a, b, n = pairs[int(rng.integers(len(pairs)))]
        return Case(p.backend, kind, f, a, other_offset=b, length=n)
    if kind == "blockflip":
        where = [(f, a, n) for f, blocks in sorted(p.blocks.items()) for a, n in blocks if n]
        f, a, n = where[int(rng.integers(len(where)))]
        return Case(p.backend, kind, f, a + int(rng.integers(n)), int(rng.integers(8)))
    raise ValueError(f"unknown corruption kind {kind!r}; valid kinds are {list(KINDS)}")


def plan_cases(p: Pristine, n: int, seed: int, *, kinds: tuple[str, ...] | None = None, meta_bits: int = 0) -> list[Case]:
    """``n`` distinct random cases over ``kinds`` (round robin; default: every file kind of the backend), then
    ``meta_bits`` random bits of the metadata record (``-1``: every bit)."""
    rng = np.random.default_rng([seed, 0 if p.backend == "zarr" else 1])
    kinds = tuple(kinds or FILE_KINDS[p.backend])
    out: list[Case] = []
    seen: set[Case] = set()
    tries = 0
    while len(out) < n and tries < 50 * n + 100:
        kind = kinds[tries % len(kinds)]
        tries += 1
        case = _random_case(p, kind, rng)
        if case is not None and case not in seen:
            seen.add(case)
            out.append(case)
    assert p.record_span is not None
    target, start, end = p.record_span
    bits = (end - start) * 8
    chosen = range(bits) if meta_bits < 0 else sorted(rng.choice(bits, size=min(meta_bits, bits), replace=False).tolist())
    out += [Case(p.backend, "metabit", target, start + i // 8, i % 8) for i in chosen]
    return out


def _apply(case: Case, store: Path) -> None:
    """Corrupt the copy at ``store``; every changed file is written anew (never the pristine's bytes in place)."""
    path = store / case.target if case.target else store
    if case.kind == "none":
        return
    if case.kind == "delete":
        path.unlink()
        return
    if case.kind == "swap_chunk":
        blob = bytearray((store / case.other).read_bytes())
        path.unlink()
        path.write_bytes(bytes(blob))
        return
    blob = bytearray(path.read_bytes())
    path.unlink()  # the copy's files are hard links to the pristine's: write a new file, never into the shared one
    if case.kind in ("bitflip", "blockflip", "metabit"):
        blob[case.offset] ^= 1 << case.bit
    elif case.kind == "zero64":
        blob[case.offset : case.offset + 64] = bytes(len(blob[case.offset : case.offset + 64]))
    elif case.kind == "truncate":
        del blob[case.offset :]
    elif case.kind == "swap_block":
        a, b, n = case.offset, case.other_offset, case.length
        blob[a : a + n], blob[b : b + n] = blob[b : b + n], blob[a : a + n]
    path.write_bytes(bytes(blob))


# ----------------------------------------------------------------------------------------------- reading
class _Hang(BaseException):
    """Raised by the alarm (a BaseException so that no ``except Exception`` in the library swallows it)."""


@contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    def fire(*_: object) -> None:
        raise _Hang(f"more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _diff(name: str, got: Any, want: Any) -> str | None:
    """None when ``got`` equals ``want`` exactly (shape, dtype, bytes), else what differs."""
    if isinstance(want, list):
        if got == want:
            return None
        bad = [i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w]
        return f"{name}: {len(got)} items (want {len(want)}), first differing at {bad[:3]}"
    got = np.asarray(got)
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{name}: shape {got.shape} {got.dtype}, want {want.shape} {want.dtype}"
    if got.size == 0 or np.array_equal(np.ascontiguousarray(got).view(np.uint8), np.ascontiguousarray(want).view(np.uint8)):
        return None
    neq = np.argwhere(got != want) if got.dtype.kind != "f" else np.argwhere(got.view(f"u{got.itemsize}") != want.view(f"u{want.itemsize}"))
    return f"{name}: {len(neq)} of {got.size} values differ, first at {neq[0].tolist()}"


def read_and_compare(p: Pristine, path: Path) -> list[str]:
    """Open ``path``, read everything, and list every difference from the reference (empty: identical)."""
    import actstore

    ref = p.ref
    diffs: list[str] = []

    def check(name: str, got: Any, want: Any) -> None:
        d = _diff(name, got, want)
        if d is not None:
            diffs.append(d)

    with actstore.open(path) as store:
        if p.meta is not None and store.meta != p.meta:
            changed = sorted(k for k in set(store.meta) | set(p.meta) if store.meta.get(k) != p.meta.get(k))
            diffs.append(f"metadata record: fields {changed} differ")
        check("roles", sorted(store.roles), ["decision", "instruction"])
        check("steps", list(store.steps), list(range(STEPS)))
        for role in ("decision", "instruction"):
            rows = store.rows(role)
            check(f"rows/{role}", np.stack([rows[c] for c in ("sample", "step", "position")], axis=1), ref[f"rows/{role}"])
            check(f"rows/{role} columns", sorted(rows), ["position", "sample", "step"])
            for layer in store.layers_of(role):
                key = f"acts/{role}/{layer}"
                if key not in ref:
                    diffs.append(f"{key}: not in the reference")
                    continue
                view = store[layer, role]
                check(key, view.numpy(), ref[key])
                idx = ref[f"{key}@idx"]
                check(f"{key}[idx]", view.numpy(idx), ref[key][idx])
                check(f"{key}[{int(idx[0])}]", view.numpy(int(idx[0])), ref[key][int(idx[0])])
            check(f"layers of {role}", [str(x) for x in store.layers_of(role)],
                  sorted({k.split("/")[2] for k in ref if k.startswith(f"acts/{role}/") and "@" not in k}, key=int))
        check("conds", store.conds, ["adarms"])
        crow = store.cond_rows("adarms")
        check("cond/adarms/rows", np.stack([crow["sample"], crow["step"]], axis=1), ref["cond/adarms/rows"])
        check("cond/adarms/acts", store.cond("adarms").numpy(), ref["cond/adarms/acts"])
        check("cond/adarms@decision", store.cond("adarms", role="decision").numpy(), ref["cond/adarms@decision"])
        samples = store.samples()
        check("samples/table", np.stack([samples["sample"], samples["episode"]], axis=1), ref["samples/table"])
        check("samples/instruction_mask", samples["instruction_mask"], ref["samples/instruction_mask"])
        check("samples/prompt_ids", samples["prompt_ids"], ref["samples/prompt_ids"])
        check("samples/prompt", samples["prompt"], ref["samples/prompt"])
        check("sample columns", sorted(samples), ["episode", "instruction_mask", "prompt", "prompt_ids", "sample"])
    return diffs


@dataclass
class Result:
    """What one case did."""

    case: Case
    outcome: str
    detail: str = ""
    """The error (type and message), or the differences read."""
    verify_ok: bool | None = None
    verify_problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    meta: dict[str, Any] | None = None
    """The record read (the control case only)."""

    @property
    def bad(self) -> bool:
        return self.outcome in BAD


def _copy(p: Pristine, store: Path) -> None:
    """The working copy: hard links to the pristine's files (readers and verify only read, and ``_apply`` writes
    every changed file anew); an HDF5 file is copied."""
    if p.path.is_dir():
        shutil.copytree(p.path, store, copy_function=os.link)
    else:
        shutil.copyfile(p.path, store)


def _restore(p: Pristine, case: Case, store: Path) -> None:
    """Undo ``case`` on the working copy, and check that nothing else in it changed (readers never write)."""
    if not p.path.is_dir():
        store.unlink(missing_ok=True)
        shutil.copyfile(p.path, store)
        return
    if case.target:
        (store / case.target).unlink(missing_ok=True)
        os.link(p.path / case.target, store / case.target)
    found = {str(f.relative_to(store)) for f in store.rglob("*") if not f.is_dir()}
    if found != set(p.files):
        extra, lost = sorted(found - set(p.files)), sorted(set(p.files) - found)
        shutil.rmtree(store)
        _copy(p, store)
        raise RuntimeError(f"case {case} left the store changed: new files {extra[:5]}, missing {lost[:5]}")


def _child(p: Pristine, case: Case, store: Path) -> dict[str, Any]:
    import actstore

    _apply(case, store)
    out: dict[str, Any] = {"outcome": None, "detail": ""}
    try:
        with _alarm(HANG_S):
            diffs = read_and_compare(p, store)
        out["outcome"], out["detail"] = ("no_effect", "") if not diffs else ("silent", "; ".join(diffs[:6]))
    except _Hang as exc:
        out["outcome"], out["detail"] = "hang", f"open/read took {exc}"
    except actstore.ActStoreError as exc:
        out["outcome"], out["detail"] = "error", f"{type(exc).__name__}: {exc}"[:400]
    except Exception as exc:  # the finding: an exception that is not actstore's
        out["outcome"], out["detail"] = "untyped", f"open/read raised {type(exc).__name__}: {exc}"[:400]
    try:
        with _alarm(HANG_S):
            report = actstore.verify(store)
        out["verify_ok"] = report.ok
        out["verify_problems"] = [str(x)[:300] for x in report.problems[:3]]
        if out["outcome"] == "silent" and not report.ok:
            out["outcome"] = "verify"
    except _Hang as exc:
        out["outcome"], out["detail"] = "hang", f"verify took {exc}; read: {out['outcome']}: {out['detail']}"[:400]
    except BaseException as exc:  # verify promises never to raise
        out["outcome"] = "untyped"
        out["detail"] = f"verify raised {type(exc).__name__}: {exc}; read: {out['detail']}"[:400]
    if case.kind == "none":
        with actstore.open(store) as s:
            out["meta"] = s.meta
    return out


def run_case(p: Pristine, case: Case, work: Path) -> Result:
    """Run one case in a forked child (a crash or an unkillable hang is an outcome, not the campaign's end) on
    the working copy under ``work``, restored afterwards."""
    import hdf5plugin  # noqa: F401  imported before the fork, not once per child

    import actstore.read._reader  # noqa: F401
    import actstore.storage._h5  # noqa: F401
    import actstore.tools._verify  # noqa: F401

    store = work / p.path.name
    if not store.exists():
        work.mkdir(parents=True, exist_ok=True)
        _copy(p, store)
    t0 = time.perf_counter()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(rfd)
            payload = json.dumps(_child(p, case, store), default=str).encode()
            with os.fdopen(wfd, "wb") as f:
                f.write(payload)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + 3 * HANG_S + 10
    with os.fdopen(rfd, "rb") as f:
        while True:
            ready, _, _ = select.select([f], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(f.fileno(), 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    _restore(p, case, store)
    seconds = time.perf_counter() - t0
    if not chunks:
        how = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.waitstatus_to_exitcode(status)}"
        outcome = "hang" if time.monotonic() >= deadline else "crash"
        return Result(case, outcome, f"the child reported nothing ({how})", seconds=seconds)
    out = json.loads(b"".join(chunks))
    return Result(case, out["outcome"], out["detail"], out.get("verify_ok"), out.get("verify_problems", []),
                  seconds, out.get("meta"))


# ----------------------------------------------------------------------------------------------- tally
def tally(results: list[Result]) -> dict[str, dict[str, int]]:
    """kind -> outcome -> count."""
    out: dict[str, Counter[str]] = {}
    for r in results:
        out.setdefault(r.case.kind, Counter())[r.outcome] += 1
    return {k: {o: c[o] for o in OUTCOMES if c[o]} for k, c in out.items()}


def render(backend: str, table: dict[str, dict[str, int]]) -> list[str]:
    """A markdown table: one row per kind, one column per outcome, BAD columns last."""
    head = ["kind", *OUTCOMES, "total", "BAD"]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    totals: Counter[str] = Counter()
    for kind in [k for k in KINDS if k in table]:
        row = table[kind]
        totals.update(row)
        n, bad = sum(row.values()), sum(v for o, v in row.items() if o in BAD)
        lines.append(f"| {backend} {kind} | " + " | ".join(str(row.get(o, 0)) for o in OUTCOMES) + f" | {n} | {bad} |")
    n, bad = sum(totals.values()), sum(v for o, v in totals.items() if o in BAD)
    lines.append(f"| {backend} all | " + " | ".join(str(totals.get(o, 0)) for o in OUTCOMES) + f" | {n} | {bad} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=500, help="random file corruptions per backend")
    ap.add_argument("--meta-bits", type=int, default=0, help="bits of the metadata record per backend (0: every bit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", nargs="+", default=["zarr", "hdf5"], choices=["zarr", "hdf5"])
    ap.add_argument("--codec", default="lz4", choices=["lz4", "zstd", "none"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "corruption.json"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the parent forks a child per case: keep it free of thread pools
    given = sys.argv[1:] if argv is None else argv
    report: dict[str, Any] = {"command": " ".join(["python -m benchmarks.corruption_campaign", *given]),
                              "seed": args.seed, "codec": args.codec, "hang_s": HANG_S, "backends": {}}
    out = Path(args.out)
    if out.exists():  # a run of some backends keeps the other backends' results of the same seed and codec
        old = json.loads(out.read_text())
        if (old.get("seed"), old.get("codec")) == (args.seed, args.codec):
            report["backends"] = {b: v for b, v in old.get("backends", {}).items() if b not in args.backends}
            report["commands"] = {b: old.get("commands", {}).get(b, old.get("command")) for b in report["backends"]}
    report.setdefault("commands", {})
    status = 0
    with tempfile.TemporaryDirectory(prefix="corruption-") as tmp:
        for backend in args.backends:
            t0 = time.perf_counter()
            p = build_pristine(Path(tmp) / backend, backend, codec=args.codec, seed=args.seed)
            cases = plan_cases(p, args.cases, args.seed, meta_bits=-1 if args.meta_bits == 0 else args.meta_bits)
            results = []
            for i, case in enumerate(cases):
                results.append(run_case(p, case, Path(tmp) / backend / "cases"))
                if (i + 1) % 2000 == 0:
                    print(f"{backend}: {i + 1}/{len(cases)} cases, {time.perf_counter() - t0:.0f} s", flush=True)
            if fingerprint(p) != p.digest:
                raise RuntimeError(f"the pristine {backend} store changed during the campaign: the harness is broken")
            table = tally(results)
            print("\n".join(render(backend, table)), flush=True)
            bad = [r for r in results if r.bad]
            status |= bool(bad)
            report["backends"][backend] = {
                "files": len(p.files), "bytes": sum(p.files.values()), "record_bytes": p.record_span[2] - p.record_span[1],
                "cases": len(results), "seconds": round(time.perf_counter() - t0, 1), "tally": table,
                "bad": [{**asdict(r.case), "outcome": r.outcome, "detail": r.detail, "verify_ok": r.verify_ok}
                        for r in bad],
                "verify_only": [{**asdict(r.case), "detail": r.detail, "verify_problems": r.verify_problems}
                                for r in results if r.outcome == "verify"],
                "no_effect_verify_flagged": sum(r.outcome == "no_effect" and r.verify_ok is False for r in results),
                "no_effect_verify_silent": sorted({f"{r.case.kind} {r.case.target}" for r in results
                                                   if r.outcome == "no_effect" and r.verify_ok and r.case.kind != "metabit"}),
                "error_but_verify_ok": [{**asdict(r.case), "detail": r.detail}
                                        for r in results if r.outcome == "error" and r.verify_ok],
            }
            report["commands"][backend] = report["command"]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1) + "\n")  # after each backend: a long run keeps its part
    print(f"wrote {out}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
