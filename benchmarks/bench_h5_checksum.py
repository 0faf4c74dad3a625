"""What the HDF5 per-block crc32c costs a reader: the same store read with its checksums verified (as always) and
with the check switched off, in the same run.

    python -m benchmarks.bench_h5_checksum               # 256 MiB of bf16 rows, d=2048
    python -m benchmarks.bench_h5_checksum --smoke       # tiny, seconds (the test runs this)

Both reads go through ``ActStore.open(path)[layer, role][:]`` (the real path: h5py direct chunk reads, the block
codec, the crc32c of each block against the ``crc32c/{array}`` dataset); the baseline only replaces the checksum
dataset lookup with "no checksums" (what a version-1 file reads like). Interleaved rounds, median, page cache warm.
Also the raw crc32c rate over the same bytes, for scale. Codec lz4 (the default) and none (where the crc is the
largest share of the work).
"""

from __future__ import annotations

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
from actstore.format._codec import crc32c
from actstore.storage._h5 import H5Backend

D = 2048


@contextmanager
def _no_checksums() -> Any:
    """The baseline: H5Backend reads its blocks without looking up (or checking) their crc32c."""
    original = H5Backend._crc
    H5Backend._crc = lambda self, key: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        H5Backend._crc = original  # type: ignore[method-assign]


def _write(path: Path, rows: np.ndarray, codec: str) -> None:
    acts = torch.from_numpy(rows).view(torch.bfloat16)
    with actstore.create(path, codec=codec) as w:
        step = 4096
        for lo in range(0, len(rows), step):
            n = min(step, len(rows) - lo)
            w.append("decision", rows={"sample": np.arange(lo, lo + n) // 100, "step": np.zeros(n, np.int64),
                                       "position": np.arange(n) % 100}, acts={0: acts[lo:lo + n]})


def _read(path: Path) -> float:
    t0 = time.perf_counter()
    with actstore.open(path) as store:
        out = store[0, "decision"][:]
    dt = time.perf_counter() - t0
    assert out.shape[1] == D
    return dt


def main(smoke: bool = False, size_mib: int = 256, rounds: int = 5, out: Path | None = None) -> dict[str, Any]:
    """Time reads with and without the HDF5 checksum check.

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
    results: dict[str, Any] = {"rows": n_rows, "d": D, "bytes": int(rows.nbytes), "rounds": rounds, "codecs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for codec in ("lz4", "none"):
            path = Path(tmp) / f"{codec}.h5"
            _write(path, rows, codec)
            _read(path)  # warm the page cache
            times: dict[str, list[float]] = {"checked": [], "unchecked": []}
            for _ in range(rounds):
                times["checked"].append(_read(path))
                with _no_checksums():
                    times["unchecked"].append(_read(path))
            med = {k: statistics.median(v) for k, v in times.items()}
            results["codecs"][codec] = {
                "seconds": times, "gb_per_s": {k: rows.nbytes / v / 1e9 for k, v in med.items()},
                "checked_vs_unchecked_time": med["checked"] / med["unchecked"],
            }
    t0 = time.perf_counter()
    for lo in range(0, rows.nbytes, 256 * 4096):
        crc32c(memoryview(rows.reshape(-1).view(np.uint8))[lo:lo + 256 * 4096])
    results["crc32c_gb_per_s"] = rows.nbytes / (time.perf_counter() - t0) / 1e9
    print(f"# HDF5 read with vs without the per-block crc32c check ({size_mib} MiB, d={D}, bf16)\n")
    print("| codec | checked GB/s | unchecked GB/s | time checked / unchecked |")
    print("|---|---|---|---|")
    for codec, r in results["codecs"].items():
        print(f"| {codec} | {r['gb_per_s']['checked']:.2f} | {r['gb_per_s']['unchecked']:.2f} | "
              f"{r['checked_vs_unchecked_time']:.2f}x |")
    print(f"\ncrc32c alone: {results['crc32c_gb_per_s']:.2f} GB/s")
    if out is not None:
        out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    tyro.cli(main)
