"""actstore against the alternatives people use for activations, on the same data, in one run.

    python -m benchmarks.bench_peers                  # 65,536 x 2048 bf16 rows (256 MiB), 3 interleaved rounds
    python -m benchmarks.bench_peers --smoke          # 8,192 x 256, one round (the test runs this)
    python -m benchmarks.bench_peers --saelens-python /tmp/sl/bin/python   # also SAELens's cache (own venv)

Every system (``benchmarks/_peers.py`` holds them and says how each is timed: actstore lz4 and none, zarr-python
with actstore's own shards and codec, h5py + hdf5plugin blosc, safetensors and ``torch.save`` per batch,
``np.memmap``, and with ``--saelens-python`` SAELens's cache in its own venv) stores the same rows
(``benchmarks/_data_gen.py``, bf16 bits) in batches of 4096, and each is timed on every part: write, bytes on disk,
a shuffled pass over every row (rows/s, CPU s per M rows) and one random row. Rounds run the systems in rotated
order; every figure is the median over the rounds and each ratio is to actstore's default lz4 in the same run. The
warm-up round checks that every loader delivers every row exactly once, bit-exact (the multiset of row hashes),
and that random rows are bit-exact. ``bench_store`` and ``bench_loader`` run the same peers for their parts.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

from benchmarks._data_gen import ActProfile, cache_path, cached_rows
from benchmarks._peers import BATCH, PARTS, SYSTEMS, run_section

__all__ = ["SYSTEMS", "main"]


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
    profile = ActProfile(d=d)
    u16_ND = cached_rows(data_dir, rows, profile)
    sec = run_section(u16_ND, data_dir / "bench_peers", PARTS, rounds, latency_rows, seed, saelens_python,
                      npy=cache_path(data_dir, rows, profile))
    raw, text, ok = sec["raw_bytes"], sec["table_markdown"], sec["all_checks_passed"]
    res = {"benchmark": "bench_peers", "smoke": smoke, "rows": rows, "d": d, "raw_bytes": raw, "rounds": rounds,
           "batch": BATCH, "checks": sec["checks"],
           "saelens": "measured" if saelens_python else "not measured (no --saelens-python given)",
           "systems": sec["systems"], "skipped": sec["skipped"],
           "total_s": time.perf_counter() - t_start,
           "env": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                   "cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
                   "versions": sec["versions"]},
           "table_markdown": text, "all_checks_passed": ok}
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


if __name__ == "__main__":
    result = tyro.cli(main)
    sys.exit(0 if result["all_checks_passed"] else 1)
