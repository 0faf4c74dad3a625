"""Out-of-core uniform shuffle (``actstore shuffle``) against ``actstore export`` of the same store, and the mixing
the default loader gives before and after.

    python -m benchmarks.bench_shuffle                 # 512 MiB of bf16 rows, d=2048 (about a minute here)
    python -m benchmarks.bench_shuffle --smoke         # tiny, seconds (the test runs this)

Throughput: rows per second of ``shuffle_store(src, dst)`` and of ``convert(src, dst)`` (a bit-exact copy through
the same writer) over the same capture-like store, interleaved rounds, median; the shuffle reads and writes about
twice as much, so the target is >= 0.4x export's rate.

Mixing: a capture-like row table (samples of ``rows_per_sample`` consecutive rows, 10 denoising steps) read by the
default loader (``store.loader(..., batch_size=4096)``); per batch, the number of distinct samples and the fraction
of row pairs that share a sample, against a uniform permutation of the same table (simulated).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tyro

import actstore
from actstore.tools._export import convert
from actstore.tools._reshuffle import shuffle_store

D = 2048
CHUNK_ROWS = 4096


def _make_store(path: Path, n_rows: int, rows_per_sample: int) -> None:
    from benchmarks._data_gen import ActGenerator, ActProfile

    gen = ActGenerator(ActProfile(d=D))
    r = np.arange(n_rows)
    with actstore.create(path, chunk_rows=CHUNK_ROWS, autocommit=False) as w:
        for a in range(0, n_rows, CHUNK_ROWS * 4):
            b = min(n_rows, a + CHUNK_ROWS * 4)
            acts = gen.rows(a, b - a)
            w.append("decision", {"sample": r[a:b] // rows_per_sample, "step": (r[a:b] // (rows_per_sample // 10)) % 10,
                                  "position": r[a:b]}, {14: acts})
            w.commit({"batches": b})


def _mixing(path: Path, batch: int, seed: int = 0) -> dict[str, float]:
    store = actstore.ActStore.open(path)
    ld = store.loader(14, "decision", batch_size=batch, with_rows=True, drop_last=True, seed=seed)
    distinct, pairs = [], []
    for _, rows in ld:
        s = rows["sample"].numpy()
        _, c = np.unique(s, return_counts=True)
        distinct.append(len(c))
        pairs.append(float((c * (c - 1)).sum() / (s.size * (s.size - 1))))
    return {"distinct_samples_per_batch": float(np.mean(distinct)), "same_sample_pair_fraction": float(np.mean(pairs))}


def _uniform_mixing(n_rows: int, rows_per_sample: int, batch: int, sims: int = 5) -> dict[str, float]:
    rng = np.random.default_rng(0)
    sample = np.arange(n_rows) // rows_per_sample
    distinct, pairs = [], []
    for _ in range(sims):
        perm = rng.permutation(sample)[: n_rows // batch * batch].reshape(-1, batch)
        for s in perm:
            _, c = np.unique(s, return_counts=True)
            distinct.append(len(c))
            pairs.append(float((c * (c - 1)).sum() / (s.size * (s.size - 1))))
    return {"distinct_samples_per_batch": float(np.mean(distinct)), "same_sample_pair_fraction": float(np.mean(pairs))}


def main(smoke: bool = False, size_mib: int = 512, rounds: int = 3, rows_per_sample: int = 100,
         out: Path | None = None, work_dir: Path | None = None) -> dict:
    """Time shuffle vs export on one store, then measure the loader's mixing on both.

    Args:
        smoke: tiny sizes (8 chunks), finishes in seconds.
        size_mib: store size (bf16 rows of d=2048).
        rounds: interleaved timing rounds (median reported).
        rows_per_sample: consecutive rows of one sample in the capture-like row table (10 steps each).
        out: write the results as JSON here.
        work_dir: scratch directory (default: a temporary one).
    """
    n_rows = 8 * CHUNK_ROWS if smoke else size_mib * (1 << 20) // (2 * D) // CHUNK_ROWS * CHUNK_ROWS
    rounds = 1 if smoke else rounds
    work = Path(tempfile.mkdtemp(dir=work_dir))
    try:
        src = work / "src.zarr"
        _make_store(src, n_rows, rows_per_sample)
        times: dict[str, list[float]] = {"export": [], "shuffle": []}
        for i in range(rounds):
            for name in ("export", "shuffle"):
                dst = work / f"{name}.zarr"
                shutil.rmtree(dst, ignore_errors=True)
                t0 = time.perf_counter()
                if name == "export":
                    convert(src, dst)
                else:
                    shuffle_store(src, dst, seed=i, bucket_bytes=64 << 20)
                times[name].append(time.perf_counter() - t0)
        rate = {k: n_rows / statistics.median(v) for k, v in times.items()}
        batch = 1024 if smoke else 4096
        res = {
            "rows": n_rows, "d": D, "bytes": n_rows * D * 2, "rounds": rounds,
            "rows_per_s": rate, "seconds": times,
            "shuffle_vs_export": rate["shuffle"] / rate["export"],
            "mixing": {
                "batch_size": batch, "rows_per_sample": rows_per_sample,
                "default_loader_original": _mixing(src, batch),
                "default_loader_shuffled": _mixing(work / "shuffle.zarr", batch),
                "uniform_permutation": _uniform_mixing(n_rows, rows_per_sample, batch),
            },
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gb = res["bytes"] / 1e9
    size = "smoke" if smoke else f"{res['bytes'] / 2**20:.0f} MiB"
    print(f"# shuffle vs export ({size}, d={D}, bf16, lz4)\n")
    print("| path | rows/s | GB/s | ratio to export | target |")
    print("|---|---|---|---|---|")
    for k in ("export", "shuffle"):
        r = rate[k]
        print(f"| {k} | {r / 1e3:.0f} k | {r * gb / n_rows:.2f} | {r / rate['export']:.2f}x | "
              f"{'>= 0.4x' if k == 'shuffle' else '-'} |")
    m = res["mixing"]
    print(f"\n# mixing of the default loader (batches of {batch}, samples of {rows_per_sample} rows)\n")
    print("| store | distinct samples per batch | same-sample pair fraction |")
    print("|---|---|---|")
    for k, label in (("default_loader_original", "original"), ("default_loader_shuffled", "after actstore shuffle"),
                     ("uniform_permutation", "uniform permutation (simulated)")):
        print(f"| {label} | {m[k]['distinct_samples_per_batch']:.1f} | {m[k]['same_sample_pair_fraction']:.5f} |")
    if out is not None:
        Path(out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    tyro.cli(main)
