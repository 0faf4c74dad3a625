"""actstore against the alternatives people use for activations, on the same data, in one run.

    python -m benchmarks.bench_peers                  # 65,536 x 2048 bf16 rows (256 MiB), 3 interleaved rounds
    python -m benchmarks.bench_peers --smoke          # 8,192 x 256, one round (the test runs this)
    python -m benchmarks.bench_peers --saelens-python /tmp/sl/bin/python   # also SAELens's cache (own venv)

Every system stores the same rows (``benchmarks/_data_gen.py``, bf16 bits) written in batches of 4096 rows, as a
capture hook hands them over:

- actstore, default codec (blosc lz4 + bitshuffle in 256-row blocks, 4096-row shards) and ``codec="none"``;
- zarr-python writing the very array metadata of actstore's lz4 array (same shards, blocks, codec and crc32c)
  through its own ``ShardingCodec``, one shard per ``__setitem__``;
- h5py with hdf5plugin's blosc filter, same codec, 256-row chunks (the block a random row decodes);
- one safetensors file per batch; one ``torch.save`` file per batch; one ``np.memmap`` file (saev's layout);
- with ``--saelens-python``, SAELens's cached-activation path (``benchmarks/_peer_saelens.py``, run each round
  in that interpreter: sae-lens needs its own venv and is not a dependency of actstore).

Measured per system and round: write (first batch until the data is written and closed; ``os.sync()`` before),
bytes on disk (everything the system wrote, row tables included), a shuffled pass over every row in batches of
4096 (rows/s, and CPU seconds per million rows from ``time.process_time``, all threads), and the median latency of
one random row. Chunked peers load with the usual chunk shuffle (random chunk order, 8-chunk buffer,
``torch.randperm``); np.memmap gathers one global permutation (each batch's indices sorted); actstore uses its
loader with the defaults. Rounds run the systems in rotated order; every figure is the median over the rounds and
each ratio is to actstore's default lz4 in the same run. The warm-up round checks that every loader delivers
every row exactly once (per-column sums of the bits) and that random rows are bit-exact.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

import actstore
from benchmarks._data_gen import ActProfile, cache_path, cached_rows

__all__ = ["SYSTEMS", "main"]

BATCH = 4096
"""Rows per written batch, per file of the per-batch peers, per shard and per loader batch."""
BLOCK = 256
"""actstore's lz4 block (and the HDF5 chunk): what one random row decodes."""
ROLE = "resid"
SHUFFLE_CHUNKS = 8


@dataclass
class Ctx:
    """What every system's functions share in one run."""

    work: Path
    u16_ND: np.ndarray
    batches: list[torch.Tensor]
    zarr_meta: str = ""

    @property
    def n(self) -> int:
        return self.u16_ND.shape[0]


def _rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _bytes_on_disk(path: Path) -> int:
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


# ------------------------------------------------------------------------------------------------ actstore
def _actstore(codec: str) -> dict[str, Callable[..., Any]]:
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

    def rows(ctx: Ctx, path: Path) -> tuple[Callable[[int], np.ndarray], Callable[[], None]]:
        store = actstore.ActStore.open(path, cache_bytes=0)
        view = store[0, ROLE]
        return (lambda i: view[i].view(torch.uint16).numpy()), store.close

    return {"write": write, "load": load, "rows": rows}


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


def _zarr_rows(ctx: Ctx, path: Path) -> tuple[Callable[[int], np.ndarray], Callable[[], None]]:
    import zarr

    z = zarr.open_array(path, mode="r")
    return (lambda i: np.asarray(z[i])), lambda: None


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


def _h5_rows(ctx: Ctx, path: Path) -> tuple[Callable[[int], np.ndarray], Callable[[], None]]:
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


def _st_save(acts_ND: torch.Tensor, p: Path) -> None:
    from safetensors.torch import save_file

    save_file({"acts": acts_ND}, str(p))


def _st_read(p: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(p))["acts"]


def _st_row(path: Path, i: int) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(path / f"{i // BATCH:06d}.safetensors"), framework="pt") as f:
        return f.get_slice("acts")[i % BATCH : i % BATCH + 1][0].view(torch.uint16).numpy()


def _files_load(read: Callable[[Path], torch.Tensor], ext: str) -> Callable[..., Iterator[torch.Tensor]]:
    def load(ctx: Ctx, path: Path, seed: int) -> Iterator[torch.Tensor]:
        yield from _chunk_shuffled(lambda c: read(path / f"{c:06d}.{ext}"), len(ctx.batches), seed)

    return load


def _pt_read(p: Path) -> torch.Tensor:
    return torch.load(p, weights_only=True)


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


def _mm_rows(ctx: Ctx, path: Path) -> tuple[Callable[[int], np.ndarray], Callable[[], None]]:
    mm = np.memmap(path, dtype=np.uint16, mode="r", shape=ctx.u16_ND.shape)
    return (lambda i: np.array(mm[i])), lambda: None


def _no_close() -> None:
    return None


SYSTEMS: dict[str, dict[str, Any]] = {
    "actstore lz4": {**_actstore("lz4"), "path": "actstore_lz4.zarr"},
    "actstore none": {**_actstore("none"), "path": "actstore_none.zarr"},
    "zarr-python, same shards + codec": {"write": _zarr_write, "load": _zarr_load, "rows": _zarr_rows,
                                         "path": "zarr_python.zarr"},
    "h5py + hdf5plugin blosc, same codec": {"write": _h5_write, "load": _h5_load, "rows": _h5_rows, "path": "h5.h5"},
    "safetensors per batch": {"write": _files_write(_st_save, "safetensors"), "load": _files_load(_st_read, "safetensors"),
                              "rows": lambda ctx, p: ((lambda i: _st_row(p, i)), _no_close), "path": "st"},
    "torch.save per batch": {"write": _files_write(torch.save, "pt"), "load": _files_load(_pt_read, "pt"),
                             "rows": lambda ctx, p: ((lambda i: _pt_read(p / f"{i // BATCH:06d}.pt")[i % BATCH]
                                                      .view(torch.uint16).numpy()), _no_close), "path": "pt"},
    "np.memmap (saev style)": {"write": _mm_write, "load": _mm_load, "rows": _mm_rows, "path": "mm.u16"},
}


# ------------------------------------------------------------------------------------------------ measure
def measure(ctx: Ctx, name: str, n_rows: int, seed: int, check: bool) -> dict[str, Any]:
    sysd = SYSTEMS[name]
    path = ctx.work / sysd["path"]
    _rm(path)
    os.sync()
    t0 = time.perf_counter()
    sysd["write"](ctx, path)
    write_s = time.perf_counter() - t0
    out: dict[str, Any] = {"write_s": write_s, "bytes": _bytes_on_disk(path)}
    sums = np.zeros(ctx.u16_ND.shape[1], np.int64) if check else None
    got = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for x in sysd["load"](ctx, path, seed):
        got += x.shape[0]
        if sums is not None:
            sums += x.view(torch.uint16).numpy().astype(np.int64).sum(0)
    load_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    out.update(rows_per_s=got / load_s, cpu_s_per_M_rows=cpu_s / got * 1e6, rows_loaded=got)
    get, close = sysd["rows"](ctx, path)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, ctx.n, size=n_rows + 5)
    for i in idx[:5]:
        get(int(i))  # warm handles and imports, not the rows measured next
    lat = []
    for i in idx[5:]:
        t = time.perf_counter()
        row = get(int(i))
        lat.append(time.perf_counter() - t)
        if check and not np.array_equal(np.asarray(row).reshape(-1), ctx.u16_ND[i]):
            out["row_exact"] = False
    close()
    out["row_p50_ms"] = statistics.median(lat) * 1e3
    if sums is not None:
        out["every_row_once"] = got == ctx.n and bool(np.array_equal(sums, ctx.u16_ND.astype(np.int64).sum(0)))
        out.setdefault("row_exact", True)
    return out


SAELENS = "SAELens cache (float32: Arrow has no bf16)"


def measure_saelens(python: str, npy: Path, work: Path, n_rows: int, seed: int, check: bool) -> dict[str, Any]:
    """SAELens's cached-activation path in its own interpreter (its dependencies conflict with ours)."""
    helper = Path(__file__).with_name("_peer_saelens.py")
    cmd = [python, str(helper), str(npy), str(work / "saelens"), str(seed), str(n_rows), *(["--check"] if check else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"SAELens helper failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------- report
METRICS = (("write_s", "write", False), ("ratio", "size", None), ("rows_per_s", "shuffled loader", True),
           ("cpu_s_per_M_rows", "CPU per M rows", False), ("row_p50_ms", "random row p50", False))


def summarise(per_round: dict[str, list[dict[str, Any]]], raw_bytes: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, runs in per_round.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("write_s", "bytes", "rows_per_s", "cpu_s_per_M_rows",
                                                                   "row_p50_ms")}
        med["write_GB_per_s"] = raw_bytes / med["write_s"] / 1e9
        med["ratio"] = raw_bytes / med["bytes"]
        med["runs"] = runs
        out[name] = med
    base = out["actstore lz4"]
    for med in out.values():
        med["vs_actstore_lz4"] = {
            "write": base["write_s"] / med["write_s"], "size": med["ratio"] / base["ratio"],
            "loader": med["rows_per_s"] / base["rows_per_s"], "cpu": med["cpu_s_per_M_rows"] / base["cpu_s_per_M_rows"],
            "row_p50": med["row_p50_ms"] / base["row_p50_ms"]}
    return out


def table(summary: dict[str, dict[str, Any]]) -> str:
    lines = ["| system | write GB/s (ratio) | size: raw / stored | shuffled loader rows/s (ratio) | "
             "CPU s per M rows (ratio) | random row p50 ms (ratio) |", "|---|---|---|---|---|---|"]
    for name, m in summary.items():
        r = m["vs_actstore_lz4"]
        lines.append(f"| {name} | {m['write_GB_per_s']:.2f} ({r['write']:.2f}) | {m['ratio']:.3f}x | "
                     f"{m['rows_per_s'] / 1e3:,.0f} k ({r['loader']:.2f}) | {m['cpu_s_per_M_rows']:.2f} "
                     f"({r['cpu']:.2f}) | {m['row_p50_ms']:.3g} ({r['row_p50']:.3g}) |")
    return "\n".join(lines)


def main(
    smoke: bool = False,
    rows: int = 65536,
    d: int = 2048,
    rounds: int = 3,
    latency_rows: int = 100,
    data_dir: Path = Path("benchmarks/_data"),
    out: Path = Path("benchmarks/results/peers.json"),
    saelens_python: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure every system in interleaved rounds; write JSON and a markdown table beside it.

    Args:
        smoke: 8,192 x 256 rows, one round (seconds).
        rows: rows of synthetic bf16 activations (a multiple of 4096).
        d: hidden size.
        rounds: timed rounds after one warm-up round (which also checks correctness).
        latency_rows: random rows timed per system and round.
        data_dir: cache of the generated rows and scratch space (gitignored).
        out: JSON results (the table goes to the same name with .md).
        saelens_python: a Python interpreter with sae-lens installed (a separate venv) to time SAELens's cache too.
        seed: seed of the loaders' shuffles and the random rows.
    """
    if smoke:
        rows, d, rounds, latency_rows = 2 * BATCH, 256, 1, 10
    if rows % BATCH:
        raise ValueError(f"rows must be a multiple of {BATCH}, got {rows}")
    t_start, load0 = time.perf_counter(), os.getloadavg()
    versions = _versions()
    profile = ActProfile(d=d)
    u16_ND = cached_rows(data_dir, rows, profile)
    work = data_dir / "bench_peers"
    _rm(work)
    work.mkdir(parents=True)
    ctx = Ctx(work, u16_ND, [torch.from_numpy(u16_ND[s : s + BATCH].copy()).view(torch.bfloat16)
                             for s in range(0, rows, BATCH)])
    names = list(SYSTEMS) + ([SAELENS] if saelens_python else [])
    npy = cache_path(data_dir, rows, profile)
    per_round: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    checks: dict[str, dict[str, bool]] = {}
    try:
        for r in range(rounds + 1):
            order = names[r % len(names):] + names[: r % len(names)] if r else names  # actstore lz4 first at warm-up
            for name in order:
                if name == SAELENS:
                    res = measure_saelens(saelens_python or "", npy, work, latency_rows, seed + r, check=r == 0)
                else:
                    res = measure(ctx, name, latency_rows, seed + r, check=r == 0)
                if r == 0:
                    checks[name] = {k: res[k] for k in ("every_row_once", "rows_are_source_rows", "row_exact")
                                    if k in res}
                else:
                    per_round[name].append(res)
                print(f"round {r} {name}: write {res['write_s']:.2f} s, loader {res['rows_per_s'] / 1e3:.0f} k rows/s, "
                      f"row {res['row_p50_ms']:.3f} ms", file=sys.stderr)
        raw = u16_ND.nbytes
        summary = summarise(per_round, raw)
        if SAELENS in per_round:
            versions["saelens_venv"] = per_round[SAELENS][0].get("versions", {})
    finally:
        _rm(work)
    text = table(summary)
    res = {"benchmark": "bench_peers", "smoke": smoke, "rows": rows, "d": d, "raw_bytes": raw, "rounds": rounds,
           "batch": BATCH, "checks": checks,
           "saelens": "measured" if saelens_python else "not measured (no --saelens-python given)",
           "systems": {k: {kk: vv for kk, vv in v.items()} for k, v in summary.items()},
           "total_s": time.perf_counter() - t_start,
           "env": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                   "cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
                   "versions": versions},
           "table_markdown": text}
    # SAELens's mixing buffer re-serves part of each fill by design: its rows must be real source rows, bit-exact
    ok = all(all(v for k, v in c.items() if not (name == SAELENS and k == "every_row_once")) for name, c in checks.items())
    res["all_checks_passed"] = ok
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    header = (f"Peers on the same data: {rows:,} x {d} bf16 rows ({raw / 2**20:.0f} MiB), batches of {BATCH}, "
              f"{rounds} interleaved round(s), medians; ratios to actstore lz4 in the same run (write, loader: "
              f"higher is faster; CPU, row p50: lower is better). {os.cpu_count()} CPUs, load average "
              f"{load0[0]:.1f} -> {res['env']['loadavg_end'][0]:.1f}. Every loader delivered every row once (SAELens: only "
              f"real rows, its mixing buffer serves some twice in an epoch's worth of batches) and every random row "
              f"was bit-exact: {'yes' if ok else 'NO'}.")
    out.with_suffix(".md").write_text(f"{header}\n\n{text}\n")
    print(header, "\n")
    print(text)
    print(f"\nJSON: {out}")
    return res


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("actstore", "zarr", "numcodecs", "h5py", "hdf5plugin", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


if __name__ == "__main__":
    result = tyro.cli(main)
    sys.exit(0 if result["all_checks_passed"] else 1)
