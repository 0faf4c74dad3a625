"""What the block sums (``blocksums/{array}``, format version 3) cost: the same Zarr store written, read whole,
read row by row and loaded shuffled with its block sums and without them, in the same run.

    python -m benchmarks.bench_blocksums               # 256 MiB of bf16 rows, d=2048
    python -m benchmarks.bench_blocksums --smoke       # tiny, seconds (the test runs this)

Every path is the real one (``actstore.create`` / ``ActStore.open(path)[layer, role]`` / ``store.loader``). The
baselines: a store written by a writer whose backend keeps no block sums (what a version-2 store is), and the same
store read with its ``layout.blocksums`` ignored (no entry looked up or compared). Interleaved rounds, median,
page cache warm, the order of the two sides alternating. Codec lz4 (the default) and none (where the check is the largest share of the work).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

import actstore
from actstore.storage._zarr import ZarrBackend

D = 2048


@contextmanager
def _no_block_sums() -> Any:
    """The write baseline: Zarr backends keep no block sums (a version-2 store)."""
    ZarrBackend.block_sums = False  # type: ignore[misc]
    try:
        yield
    finally:
        ZarrBackend.block_sums = True  # type: ignore[misc]


def _write(path: Path, rows: np.ndarray, codec: str) -> float:
    acts = torch.from_numpy(rows).view(torch.bfloat16)
    t0 = time.perf_counter()
    with actstore.create(path, codec=codec, overwrite=True) as w:
        for lo in range(0, len(rows), 1024):
            n = min(1024, len(rows) - lo)
            w.append("decision", rows={"sample": np.arange(lo, lo + n) // 100, "step": np.zeros(n, np.int64),
                                       "position": np.arange(n) % 100}, acts={0: acts[lo:lo + n]})
    return time.perf_counter() - t0


def _open(path: Path, sums: bool) -> actstore.ActStore:
    store = actstore.open(path, cache_bytes=0)
    if not sums:  # readers made from now on look no entry up (what a version-2 store reads like)
        store.record = dataclasses.replace(store.record, layout=dataclasses.replace(store.record.layout, blocksums=None))
    assert (store[0, "decision"]._reader.sums is not None) == sums
    return store


def _read_all(path: Path, sums: bool) -> float:
    with _open(path, sums) as store:
        t0 = time.perf_counter()
        out = store[0, "decision"][:]
        dt = time.perf_counter() - t0
    assert out.shape[1] == D
    return dt


def _row_p50(path: Path, sums: bool, idx: np.ndarray) -> float:
    with _open(path, sums) as store:
        view = store[0, "decision"]
        times = []
        for i in idx:
            t0 = time.perf_counter()
            view[int(i)]
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _epoch(path: Path, sums: bool) -> float:
    with _open(path, sums) as store:
        t0 = time.perf_counter()
        n = sum(int(b.shape[0]) for b in store.loader(0, "decision", batch_size=4096, seed=1))
        dt = time.perf_counter() - t0
    return n / dt


def _check_cost(path: Path, n: int = 2000) -> tuple[float, float]:
    """Microseconds per block: the block-sum check alone, and a whole ``decode_block`` (read bytes in memory:
    crc32c, size, decode, check), on one block of the store."""
    with actstore.open(path) as store:
        reader = store[0, "decision"]._reader
        out = np.empty((reader.block_rows, reader.width), dtype=reader.dtype)
        blob = reader.backend.read_block(reader.key, 1, reader.per_chunk)
        trailing = bytes(blob[-4:])
        reader.decode_block(blob, 1, out)
        assert reader.sums is not None and reader.sums.matches(1, trailing, out)
        t0 = time.perf_counter()
        for _ in range(n):
            reader.sums.matches(1, trailing, out)
        check = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n // 10):
            reader.decode_block(blob, 1, out)
        decode = (time.perf_counter() - t0) / (n // 10)
    return check * 1e6, decode * 1e6


def main(smoke: bool = False, size_mib: int = 256, rounds: int = 5, out: Path | None = None) -> dict[str, Any]:
    """Time writes, whole reads, single-row reads and a shuffled loader epoch with and without block sums.

    Args:
        smoke: tiny sizes, finishes in seconds.
        size_mib: store size (bf16 rows of d=2048).
        rounds: interleaved timing rounds (median reported).
        out: write the results as JSON here.
    """
    if smoke:
        size_mib, rounds = 4, 2
    n_rows = size_mib * (1 << 20) // (2 * D)
    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((n_rows, D), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    idx = rng.integers(0, n_rows, size=50 if smoke else 400)
    results: dict[str, Any] = {"rows": n_rows, "d": D, "bytes": int(rows.nbytes), "rounds": rounds, "codecs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for codec in ("lz4", "none"):
            path, plain = Path(tmp) / f"{codec}.zarr", Path(tmp) / f"{codec}-plain.zarr"
            t: dict[str, list[float]] = {k: [] for k in ("write", "write_plain", "read", "read_plain", "row_s",
                                                          "row_s_plain", "epoch_rows_s", "epoch_rows_s_plain")}
            _write(path, rows, codec)
            _epoch(path, True)  # warm the page cache and the decode pool
            for i in range(rounds):
                for sums in (True, False) if i % 2 == 0 else (False, True):  # ABBA: no side always goes first
                    tag = "" if sums else "_plain"
                    if sums:
                        t["write"].append(_write(path, rows, codec))
                    else:
                        with _no_block_sums():
                            t["write_plain"].append(_write(plain, rows, codec))
                    t["read" + tag].append(statistics.median(_read_all(path, sums) for _ in range(3)))
                    t["row_s" + tag].append(_row_p50(path, sums, idx))
                    t["epoch_rows_s" + tag].append(statistics.median(_epoch(path, sums) for _ in range(3)))
            check_us, decode_us = _check_cost(path)
            med = {k: statistics.median(v) for k, v in t.items()}
            results["codecs"][codec] = {
                "raw": t, "median": med,
                "ratio": {"write_time": med["write"] / med["write_plain"], "read_time": med["read"] / med["read_plain"],
                          "row_p50": med["row_s"] / med["row_s_plain"],
                          "epoch_rows_s": med["epoch_rows_s"] / med["epoch_rows_s_plain"]},
                "check_us_per_block": check_us, "decode_us_per_block": decode_us,
                "check_share_of_decode": check_us / decode_us,
                "sums_bytes": sum(f.stat().st_size for f in (path / "blocksums").rglob("*") if f.is_file()),
            }
    print(f"# Block sums: with / without, same run ({size_mib} MiB, d={D}, bf16, {rounds} interleaved rounds)\n")
    print("| codec | write time | whole read time | single row p50 | loader rows/s | check / decode per block | "
          "block-sums bytes |")
    print("|---|---|---|---|---|---|---|")
    for codec, r in results["codecs"].items():
        q, m = r["ratio"], r["median"]
        print(f"| {codec} | {q['write_time']:.3f}x | {q['read_time']:.3f}x | {q['row_p50']:.3f}x "
              f"({m['row_s'] * 1e3:.2f} vs {m['row_s_plain'] * 1e3:.2f} ms) | {q['epoch_rows_s']:.3f}x | "
              f"{r['check_us_per_block']:.2f} / {r['decode_us_per_block']:.0f} us "
              f"({100 * r['check_share_of_decode']:.2f}%) | {r['sums_bytes']} |")
    if out is not None:
        out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    tyro.cli(main)
