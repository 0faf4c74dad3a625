"""Single-row read latency, idle and while another Python thread is busy (issue 13 item 4: p50 <= 2 ms).

    python -m benchmarks.bench_row_latency               # 64 MiB of bf16 rows, d=2048, 300 rows per case
    python -m benchmarks.bench_row_latency --smoke       # tiny, seconds (the test runs this)

Every read is ``store[layer, role][i]`` with no block cache (``cache_bytes=0``: each row decodes its block from
the file, page cache warm), for the default codec lz4 and for ``none``; the same rows from an ``np.memmap`` of the
raw array and from h5py (hdf5plugin blosc lz4 + bitshuffle, 256-row chunks) in the same run. "busy": a second
Python thread runs pure-Python arithmetic meanwhile, so a read that releases the GIL waits for it to come back
(up to the 5 ms switch interval each time). Reported: p50 and p90 in ms.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

import actstore

D = 2048


@contextmanager
def _busy() -> Any:
    """A Python thread that keeps the interpreter busy (it releases the GIL only when the interval forces it)."""
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i * i

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def _times(read: Callable[[int], Any], idx: np.ndarray) -> list[float]:
    out = []
    for i in idx:
        t0 = time.perf_counter()
        read(int(i))
        out.append(time.perf_counter() - t0)
    return out


def _write_h5(path: Path, rows: np.ndarray) -> None:
    import h5py
    import hdf5plugin

    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=rows, chunks=(256, D),
                         **hdf5plugin.Blosc(cname="lz4", clevel=9, shuffle=hdf5plugin.Blosc.BITSHUFFLE))


def main(smoke: bool = False, size_mib: int = 64, n: int = 300, out: Path | None = None) -> dict[str, Any]:
    """Time single-row reads of actstore (lz4, none), np.memmap and h5py, idle and with a busy thread.

    Args:
        smoke: tiny sizes, finishes in seconds.
        size_mib: store size (bf16 rows of d=2048).
        n: rows timed per case.
        out: write the results as JSON here.
    """
    import h5py

    if smoke:
        size_mib, n = 4, 30
    n_rows = size_mib * (1 << 20) // (2 * D)
    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((n_rows, D), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    idx = rng.integers(0, n_rows, size=n)
    res: dict[str, Any] = {"rows": n_rows, "d": D, "n": n, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        readers: dict[str, tuple[Callable[[int], Any], Callable[[], None]]] = {}
        for codec in ("lz4", "none"):
            path = Path(tmp) / f"{codec}.zarr"
            with actstore.create(path, codec=codec) as w:
                for lo in range(0, n_rows, 4096):
                    k = min(4096, n_rows - lo)
                    w.append("decision", rows={"sample": np.arange(lo, lo + k), "step": np.zeros(k, np.int64),
                                               "position": np.zeros(k, np.int64)},
                             acts={0: torch.from_numpy(rows[lo:lo + k]).view(torch.bfloat16)})
            store = actstore.open(path, cache_bytes=0)
            view = store[0, "decision"]
            readers[f"actstore {codec}"] = (lambda i, v=view: v[i], store.close)
        mm_path = Path(tmp) / "mm.u16"
        rows.tofile(mm_path)
        mm = np.memmap(mm_path, dtype=np.uint16, mode="r", shape=rows.shape)
        readers["np.memmap"] = (lambda i: np.array(mm[i]), lambda: None)
        h5_path = Path(tmp) / "x.h5"
        _write_h5(h5_path, rows)
        h5 = h5py.File(h5_path, "r")
        readers["h5py blosc lz4"] = (lambda i: h5["x"][i], h5.close)
        for name, (read, _) in readers.items():
            for i in idx[:10]:
                read(int(i))  # warm the page cache and the handles
            case: dict[str, Any] = {}
            for mode in ("idle", "busy"):
                samples: list[float] = []
                for rnd in range(2):  # idle and busy alternate per round
                    if mode == "busy":
                        with _busy():
                            samples += _times(read, idx[rnd::2])
                    else:
                        samples += _times(read, idx[rnd::2])
                q = np.quantile(samples, [0.5, 0.9])
                case[mode] = {"p50_ms": float(q[0] * 1e3), "p90_ms": float(q[1] * 1e3), "n": len(samples)}
            res["cases"][name] = case
        for _, close in readers.values():
            close()
    print(f"# Single-row reads ({size_mib} MiB bf16, d={D}, {n} rows, no block cache)\n")
    print("| reader | idle p50 / p90 ms | busy thread p50 / p90 ms |")
    print("|---|---|---|")
    for name, c in res["cases"].items():
        print(f"| {name} | {c['idle']['p50_ms']:.3f} / {c['idle']['p90_ms']:.3f} | "
              f"{c['busy']['p50_ms']:.3f} / {c['busy']['p90_ms']:.3f} |")
    if out is not None:
        out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    tyro.cli(main)
