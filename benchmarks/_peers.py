"""Each peer system's write / shuffled load / random row, over the same rows, for the benchmarks that compare.

``bench_peers`` measures every part in interleaved rounds; ``bench_store`` takes the write, the size and the random
row (``run_section(parts=("write", "rows"))``), ``bench_loader`` the shuffled loader (``parts=("load",)``). The
systems, written in batches of ``BATCH`` rows as a capture hook hands them over:

- actstore, default codec (blosc lz4 + bitshuffle in 256-row blocks, 4096-row shards) and ``codec="none"``;
- zarr-python writing the very array metadata of actstore's lz4 array (same shards, blocks, codec and crc32c)
  through its own ``ShardingCodec``, one shard per ``__setitem__``;
- h5py with hdf5plugin's blosc filter, same codec, 256-row chunks (the block a random row decodes);
- one safetensors file per batch; one ``torch.save`` file per batch; one ``np.memmap`` file (saev's layout);
- with a ``saelens_python`` interpreter, SAELens's cached-activation path (``benchmarks/_peer_saelens.py``, run
  each round in that interpreter: sae-lens needs its own venv and is not a dependency of actstore).

A peer whose package is missing is skipped with the reason. Write: first batch until the data is written and
closed (``os.sync()`` before); size: every byte the system wrote (row tables included); load: a shuffled pass over
every row in batches of ``BATCH`` (rows/s, and CPU seconds per million rows from ``time.process_time``, all
threads); random row: the median latency of one row. Chunked peers load with the usual chunk shuffle (random chunk
order, 8-chunk buffer, ``torch.randperm``); np.memmap gathers one global permutation (each batch's indices sorted);
actstore uses its loader with the defaults. Round 0 is a warm-up that runs every part and checks that every loader
delivers every row exactly once, bit-exact (the sorted multiset of row hashes), and that random rows are bit-exact.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

import actstore

__all__ = ["BATCH", "PARTS", "SAELENS", "SYSTEMS", "Ctx", "Peer", "bytes_on_disk", "checks_passed", "measure", "rm",
           "run_rounds", "run_section", "summarise", "table", "versions"]

BATCH = 4096
"""Rows per written batch, per file of the per-batch peers, per shard and per loader batch."""
BLOCK = 256
"""actstore's lz4 block (and the HDF5 chunk): what one random row decodes."""
ROLE = "resid"
SHUFFLE_CHUNKS = 8
SAELENS = "SAELens cache (float32: Arrow has no bf16)"
PARTS = ("write", "load", "rows")


@dataclass
class Ctx:
    """What every system's functions share in one run."""

    work: Path
    """Scratch folder: every system writes under it."""
    u16_ND: np.ndarray
    """The rows, as bf16 bits."""
    npy: Path | None = None
    """An ``.npy`` file of exactly these rows (for SAELens's interpreter); written under ``work`` when None."""
    zarr_meta: str = field(default="", init=False)
    """actstore's lz4 array metadata, handed to zarr-python (set when actstore lz4 is written)."""

    @property
    def n(self) -> int:
        return self.u16_ND.shape[0]

    @cached_property
    def batches(self) -> list[torch.Tensor]:
        """Independent per-batch tensors, as a hook hands them over (``torch.save`` of a slice saves it all)."""
        return [torch.from_numpy(self.u16_ND[s : s + BATCH].copy()).view(torch.bfloat16)
                for s in range(0, self.n, BATCH)]

    @cached_property
    def hash_mult(self) -> np.ndarray:
        return np.random.default_rng(0x5EED).integers(0, 2**63, size=self.u16_ND.shape[1], dtype=np.uint64) * 2 + 1

    def row_hashes(self, u16_BD: np.ndarray) -> np.ndarray:
        """A 64-bit hash per row (a random linear form mod 2**64): equal multisets mean the same rows."""
        return (u16_BD.astype(np.uint64) * self.hash_mult).sum(axis=1, dtype=np.uint64)

    @cached_property
    def sorted_hashes(self) -> np.ndarray:
        return np.sort(np.concatenate([self.row_hashes(self.u16_ND[s : s + BATCH]) for s in range(0, self.n, BATCH)]))


def rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def bytes_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _chunk_shuffled(read: Callable[[int], torch.Tensor], n_chunks: int, seed: int) -> Iterator[torch.Tensor]:
    """Random chunk order, SHUFFLE_CHUNKS chunks concatenated and permuted, sliced into batches."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_chunks, generator=g).tolist()
    for s in range(0, n_chunks, SHUFFLE_CHUNKS):
        buf = torch.cat([read(c) for c in order[s : s + SHUFFLE_CHUNKS]])
        perm = torch.randperm(buf.shape[0], generator=g)
        for b in range(0, buf.shape[0], BATCH):
            yield buf[perm[b : b + BATCH]]


Rows = tuple[Callable[[int], np.ndarray], Callable[[], None]]


@dataclass(frozen=True)
class Peer:
    """One system's three operations over the rows of a ``Ctx``."""

    path: str
    """File or folder name under ``Ctx.work``."""
    write: Callable[[Ctx, Path], None]
    """Write ``ctx.batches`` to the path; everything is written and closed when it returns."""
    load: Callable[[Ctx, Path, int], Iterator[torch.Tensor]]
    """One shuffled pass over every row (the int is the seed), in batches of ``BATCH``."""
    rows: Callable[[Ctx, Path], Rows]
    """A getter of row i (its bf16 bits) and the function that closes what it opened."""
    needs: tuple[str, ...] = ()
    """Modules it imports: a missing one skips the peer, with that reason."""


# ------------------------------------------------------------------------------------------------ actstore
def _actstore(codec: str) -> Peer:
    def write(ctx: Ctx, path: Path) -> None:
        i = np.arange(ctx.n, dtype=np.int64)
        rows = {"sample": i // 1024, "step": np.zeros(ctx.n, np.int64), "position": i % 1024}
        with actstore.create(path, codec=codec, overwrite=True) as w:
            for s, acts_ND in zip(range(0, ctx.n, BATCH), ctx.batches, strict=True):
                w.append(ROLE, {k: v[s : s + len(acts_ND)] for k, v in rows.items()}, {0: acts_ND})
        if codec == "lz4" and not ctx.zarr_meta:
            ctx.zarr_meta = (path / "acts" / ROLE / "0" / "zarr.json").read_text()

    def load(ctx: Ctx, path: Path, seed: int) -> Iterator[torch.Tensor]:
        with actstore.ActStore.open(path) as store:
            yield from store.loader(0, ROLE, batch_size=BATCH, seed=seed)

    def rows(ctx: Ctx, path: Path) -> Rows:
        store = actstore.ActStore.open(path, cache_bytes=0)
        view = store[0, ROLE]
        return (lambda i: view[i].view(torch.uint16).numpy()), store.close

    return Peer(f"actstore_{codec}.zarr", write, load, rows)


# ---------------------------------------------------------------------------------------------- zarr-python
def _zarr_write(ctx: Ctx, path: Path) -> None:
    import zarr

    path.mkdir(parents=True)
    (path / "zarr.json").write_text(ctx.zarr_meta)  # actstore's own array metadata: same shards and codec chain
    z = zarr.open_array(path, mode="r+")
    for s, acts_ND in zip(range(0, ctx.n, BATCH), ctx.batches, strict=True):
        z[s : s + len(acts_ND)] = acts_ND.view(torch.uint16).numpy()


def _zarr_load(ctx: Ctx, path: Path, seed: int) -> Iterator[torch.Tensor]:
    import zarr

    z = zarr.open_array(path, mode="r")
    read = lambda c: torch.from_numpy(z[c * BATCH : (c + 1) * BATCH]).view(torch.bfloat16)  # noqa: E731
    yield from _chunk_shuffled(read, -(-ctx.n // BATCH), seed)


def _zarr_rows(ctx: Ctx, path: Path) -> Rows:
    import zarr

    z = zarr.open_array(path, mode="r")
    return (lambda i: np.asarray(z[i])), _no_close


# --------------------------------------------------------------------------------------------------- h5py
def _h5_write(ctx: Ctx, path: Path) -> None:
    import h5py
    import hdf5plugin

    d = ctx.u16_ND.shape[1]
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("acts", shape=ctx.u16_ND.shape, dtype=np.uint16, chunks=(BLOCK, d),
                              **hdf5plugin.Blosc(cname="lz4", clevel=9, shuffle=hdf5plugin.Blosc.BITSHUFFLE))
        for s, acts_ND in zip(range(0, ctx.n, BATCH), ctx.batches, strict=True):
            ds[s : s + len(acts_ND)] = acts_ND.view(torch.uint16).numpy()


def _h5_load(ctx: Ctx, path: Path, seed: int) -> Iterator[torch.Tensor]:
    import h5py
    import hdf5plugin  # noqa: F401 - registers the blosc filter

    with h5py.File(path, "r") as f:
        ds = f["acts"]
        read = lambda c: torch.from_numpy(ds[c * BATCH : (c + 1) * BATCH]).view(torch.bfloat16)  # noqa: E731
        yield from _chunk_shuffled(read, -(-ctx.n // BATCH), seed)


def _h5_rows(ctx: Ctx, path: Path) -> Rows:
    import h5py
    import hdf5plugin  # noqa: F401

    f = h5py.File(path, "r", rdcc_nbytes=0)  # no chunk cache, as actstore's cache_bytes=0
    ds = f["acts"]
    return (lambda i: ds[i]), f.close


# --------------------------------------------------------------------------------------- per-batch files
def _files_write(save: Callable[[torch.Tensor, Path], None], ext: str) -> Callable[[Ctx, Path], None]:
    def write(ctx: Ctx, path: Path) -> None:
        path.mkdir(parents=True)
        for b, acts_ND in enumerate(ctx.batches):
            save(acts_ND, path / f"{b:06d}.{ext}")

    return write


def _files_load(read: Callable[[Path], torch.Tensor], ext: str) -> Callable[[Ctx, Path, int], Iterator[torch.Tensor]]:
    def load(ctx: Ctx, path: Path, seed: int) -> Iterator[torch.Tensor]:
        yield from _chunk_shuffled(lambda c: read(path / f"{c:06d}.{ext}"), len(ctx.batches), seed)

    return load


def _st_save(acts_ND: torch.Tensor, p: Path) -> None:
    from safetensors.torch import save_file

    save_file({"acts": acts_ND}, str(p))


def _st_read(p: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(p))["acts"]


def _st_rows(ctx: Ctx, path: Path) -> Rows:
    from safetensors import safe_open

    def get(i: int) -> np.ndarray:
        with safe_open(str(path / f"{i // BATCH:06d}.safetensors"), framework="pt") as f:
            return f.get_slice("acts")[i % BATCH : i % BATCH + 1][0].view(torch.uint16).numpy()

    return get, _no_close


def _pt_read(p: Path) -> torch.Tensor:
    return torch.load(p, weights_only=True)


def _pt_rows(ctx: Ctx, path: Path) -> Rows:
    return (lambda i: _pt_read(path / f"{i // BATCH:06d}.pt")[i % BATCH].view(torch.uint16).numpy()), _no_close


# ------------------------------------------------------------------------------------------------- memmap
def _mm_write(ctx: Ctx, path: Path) -> None:
    mm = np.memmap(path, dtype=np.uint16, mode="w+", shape=ctx.u16_ND.shape)
    for s, acts_ND in zip(range(0, ctx.n, BATCH), ctx.batches, strict=True):
        mm[s : s + len(acts_ND)] = acts_ND.view(torch.uint16).numpy()
    mm.flush()
    del mm


def _mm_load(ctx: Ctx, path: Path, seed: int) -> Iterator[torch.Tensor]:
    mm = np.memmap(path, dtype=np.uint16, mode="r", shape=ctx.u16_ND.shape)
    perm = np.random.default_rng(seed).permutation(ctx.n)
    for b in range(0, ctx.n, BATCH):
        yield torch.from_numpy(mm[np.sort(perm[b : b + BATCH])]).view(torch.bfloat16)


def _mm_rows(ctx: Ctx, path: Path) -> Rows:
    mm = np.memmap(path, dtype=np.uint16, mode="r", shape=ctx.u16_ND.shape)
    return (lambda i: np.array(mm[i])), _no_close


def _no_close() -> None:
    return None


_DEFAULT = actstore.StoreConfig().codec
"""actstore's default codec: measured too when it is neither lz4 (the base of every ratio) nor none."""

SYSTEMS: dict[str, Peer] = {
    "actstore lz4": _actstore("lz4"),
    "actstore none": _actstore("none"),
    **({f"actstore {_DEFAULT} (default codec)": _actstore(_DEFAULT)} if _DEFAULT not in ("lz4", "none") else {}),
    "zarr-python, same shards + codec": Peer("zarr_python.zarr", _zarr_write, _zarr_load, _zarr_rows, ("zarr",)),
    "h5py + hdf5plugin blosc, same codec": Peer("h5.h5", _h5_write, _h5_load, _h5_rows, ("h5py", "hdf5plugin")),
    "safetensors per batch": Peer("st", _files_write(_st_save, "safetensors"), _files_load(_st_read, "safetensors"),
                                  _st_rows, ("safetensors",)),
    "torch.save per batch": Peer("pt", _files_write(torch.save, "pt"), _files_load(_pt_read, "pt"), _pt_rows),
    "np.memmap (saev style)": Peer("mm.u16", _mm_write, _mm_load, _mm_rows),
}
"""Every in-process system; "actstore lz4" first (zarr-python reuses its metadata) and the base of every ratio."""


def available(saelens_python: str | None) -> tuple[list[str], dict[str, str]]:
    """The systems to measure (SAELens last, when its interpreter is given) and why each other one is skipped."""
    names, skipped = [], {}
    for name, peer in SYSTEMS.items():
        missing = [m for m in peer.needs if importlib.util.find_spec(m) is None]
        if missing:
            skipped[name] = f"{', '.join(missing)} not installed (pip install -e '.[bench]')"
        else:
            names.append(name)
    if saelens_python:
        names.append(SAELENS)
    else:
        skipped[SAELENS] = "not measured (no --saelens-python given: sae-lens lives in its own venv)"
    return names, skipped


# ------------------------------------------------------------------------------------------------ measure
def measure(ctx: Ctx, name: str, parts: tuple[str, ...], latency_rows: int, seed: int, check: bool) -> dict[str, Any]:
    """Time ``parts`` of one system (``check``: all three, and verify the rows). Its data must exist unless written."""
    peer = SYSTEMS[name]
    path = ctx.work / peer.path
    out: dict[str, Any] = {}
    if check or "write" in parts:
        rm(path)
        os.sync()
        t0 = time.perf_counter()
        peer.write(ctx, path)
        out.update(write_s=time.perf_counter() - t0, bytes=bytes_on_disk(path))
    if check or "load" in parts:
        hashes: list[np.ndarray] = []
        got = 0
        c0, t0 = time.process_time(), time.perf_counter()
        for x in peer.load(ctx, path, seed):
            got += x.shape[0]
            if check:
                hashes.append(ctx.row_hashes(x.view(torch.uint16).numpy()))
        load_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        out.update(rows_per_s=got / load_s, cpu_s_per_M_rows=cpu_s / got * 1e6, rows_loaded=got)
        if check:
            out["every_row_once"] = got == ctx.n and bool(np.array_equal(np.sort(np.concatenate(hashes)),
                                                                         ctx.sorted_hashes))
    if check or "rows" in parts:
        get, close = peer.rows(ctx, path)
        idx = np.random.default_rng(seed).integers(0, ctx.n, size=latency_rows + 5)
        for i in idx[:5]:
            get(int(i))  # warm handles and imports, not the rows measured next
        lat, exact = [], True
        for i in idx[5:]:
            t = time.perf_counter()
            row = get(int(i))
            lat.append(time.perf_counter() - t)
            exact &= not check or bool(np.array_equal(np.asarray(row).reshape(-1), ctx.u16_ND[i]))
        close()
        out["row_p50_ms"] = statistics.median(lat) * 1e3
        if check:
            out["row_exact"] = exact
    return out


def measure_saelens(python: str, ctx: Ctx, latency_rows: int, seed: int, check: bool) -> dict[str, Any]:
    """SAELens's cached-activation path in its own interpreter (its dependencies conflict with ours)."""
    if ctx.npy is None:
        ctx.npy = ctx.work / "rows.npy"
        np.save(ctx.npy, ctx.u16_ND)
    helper = Path(__file__).with_name("_peer_saelens.py")
    cmd = [python, str(helper), str(ctx.npy), str(ctx.work / "saelens"), str(seed), str(latency_rows),
           *(["--check"] if check else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"SAELens helper {python} failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_rounds(ctx: Ctx, names: list[str], rounds: int, parts: tuple[str, ...], latency_rows: int, seed: int,
               saelens_python: str | None = None) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, bool]]]:
    """A checked warm-up round, then ``rounds`` timed rounds in rotated order: each system's runs, and its checks."""
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise ValueError(f"parts {parts!r}: each must be one of {PARTS}")
    per_round: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    checks: dict[str, dict[str, bool]] = {}
    for r in range(rounds + 1):
        order = names[r % len(names):] + names[: r % len(names)] if r else names  # actstore lz4 first at warm-up
        for name in order:
            os.sync()  # no dirty pages of the system before (SAELens writes GBs each round) flushed during this one
            if name == SAELENS:
                res = measure_saelens(saelens_python or "", ctx, latency_rows, seed + r, check=r == 0)
            else:
                res = measure(ctx, name, parts, latency_rows, seed + r, check=r == 0)
            if r == 0:
                checks[name] = {k: res[k] for k in ("every_row_once", "rows_are_source_rows", "row_exact") if k in res}
            else:
                per_round[name].append(res)
            got = [f"write {res['write_s']:.2f} s" if "write_s" in res else "",
                   f"loader {res['rows_per_s'] / 1e3:.0f} k rows/s" if "rows_per_s" in res else "",
                   f"row {res['row_p50_ms']:.3f} ms" if "row_p50_ms" in res else ""]
            print(f"round {r} {name}: {', '.join(g for g in got if g)}", file=sys.stderr)
    return per_round, checks


def checks_passed(checks: dict[str, dict[str, bool]]) -> bool:
    """SAELens's mixing buffer re-serves part of each fill by design: its rows must be real source rows, bit-exact."""
    return all(all(v for k, v in c.items() if not (name == SAELENS and k == "every_row_once"))
               for name, c in checks.items())


# ------------------------------------------------------------------------------------------------- report
_MEDIANS = ("write_s", "bytes", "rows_per_s", "cpu_s_per_M_rows", "row_p50_ms")


def summarise(per_round: dict[str, list[dict[str, Any]]], raw_bytes: int) -> dict[str, dict[str, Any]]:
    """Medians over the rounds of what every round measured, and ratios to actstore lz4 (``vs_actstore_lz4``)."""
    out: dict[str, dict[str, Any]] = {}
    for name, runs in per_round.items():
        med: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in _MEDIANS if all(k in r for r in runs)}
        if "write_s" in med:
            med["write_GB_per_s"] = raw_bytes / med["write_s"] / 1e9
            med["ratio"] = raw_bytes / med["bytes"]
        med["runs"] = runs
        out[name] = med
    base = out["actstore lz4"]
    for med in out.values():
        r = med["vs_actstore_lz4"] = {}
        # a ratio only where the base measured it too (SAELens' runner always times its loader, for one)
        if "write_s" in med and "write_s" in base:
            r.update(write=base["write_s"] / med["write_s"], size=med["ratio"] / base["ratio"])
        if "rows_per_s" in med and "rows_per_s" in base:
            r.update(loader=med["rows_per_s"] / base["rows_per_s"], cpu=med["cpu_s_per_M_rows"] / base["cpu_s_per_M_rows"])
        if "row_p50_ms" in med and "row_p50_ms" in base:
            r["row_p50"] = med["row_p50_ms"] / base["row_p50_ms"]
    return out


_COLUMNS: dict[str, tuple[str, Callable[[dict[str, Any], dict[str, float]], str]]] = {
    "write": ("write GB/s (ratio)", lambda m, r: f"{m['write_GB_per_s']:.2f} ({r['write']:.2f})"),
    "size": ("size: raw / stored", lambda m, r: f"{m['ratio']:.3f}x"),
    "loader": ("shuffled loader rows/s (ratio)", lambda m, r: f"{m['rows_per_s'] / 1e3:,.0f} k ({r['loader']:.2f})"),
    "cpu": ("CPU s per M rows (ratio)", lambda m, r: f"{m['cpu_s_per_M_rows']:.2f} ({r['cpu']:.2f})"),
    "row_p50": ("random row p50 ms (ratio)", lambda m, r: f"{m['row_p50_ms']:.3g} ({r['row_p50']:.3g})"),
}


def table(summary: dict[str, dict[str, Any]], skipped: dict[str, str] | None = None) -> str:
    """A markdown table of every column the summary holds (ratios to actstore lz4); skipped systems say why."""
    cols = [c for c in _COLUMNS if c in summary["actstore lz4"]["vs_actstore_lz4"]]
    lines = ["| system | " + " | ".join(_COLUMNS[c][0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in summary.items():
        lines.append(f"| {name} | " + " | ".join(_COLUMNS[c][1](m, m["vs_actstore_lz4"]) for c in cols) + " |")
    for name, why in (skipped or {}).items():
        lines.append(f"| {name} | skipped: {why} |" + " - |" * (len(cols) - 1))
    return "\n".join(lines)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("actstore", "zarr", "numcodecs", "h5py", "hdf5plugin", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def run_section(u16_ND: np.ndarray, work: Path, parts: tuple[str, ...], rounds: int, latency_rows: int, seed: int,
                saelens_python: str | None = None, npy: Path | None = None) -> dict[str, Any]:
    """Every available peer on ``u16_ND`` under ``work`` (removed afterwards): a results section with its table."""
    if u16_ND.shape[0] % BATCH:
        raise ValueError(f"peers need a multiple of {BATCH} rows, got {u16_ND.shape[0]}")
    names, skipped = available(saelens_python)
    rm(work)
    work.mkdir(parents=True)
    ctx = Ctx(work, u16_ND, npy)
    try:
        per_round, checks = run_rounds(ctx, names, rounds, parts, latency_rows, seed, saelens_python)
    finally:
        rm(work)
    summary = summarise(per_round, u16_ND.nbytes)
    vers = versions()
    if SAELENS in per_round:
        vers["saelens_venv"] = per_round[SAELENS][0].get("versions", {})
    return {"rows": ctx.n, "d": u16_ND.shape[1], "raw_bytes": u16_ND.nbytes, "batch": BATCH, "rounds": rounds,
            "parts": list(parts), "systems": summary, "checks": checks, "skipped": skipped,
            "all_checks_passed": checks_passed(checks), "versions": vers, "table_markdown": table(summary, skipped)}
