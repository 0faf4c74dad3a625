"""Before / after: the same public-API workload timed under two git revisions of actstore, interleaved.

    python -m benchmarks.bench_ab --base 72c46ef            # base vs the working tree, 128 MiB bf16, d=2048
    python -m benchmarks.bench_ab --base HEAD~3 --smoke     # tiny, seconds (the test runs this)

The base revision is checked out into a temporary git worktree; each measurement runs in a fresh interpreter whose
``PYTHONPATH`` puts that tree first, so both sides use only ``actstore.create`` / ``actstore.open`` / ``view[:]``
/ ``view[i]`` / ``store.loader`` (the public API both revisions share). Per round and side: write the store
(``--codec``, default lz4), read it whole, read 200 random single rows (p50, no cache) and run three shuffled
epochs of one loader (``epoch_rows_s``: all three; ``steady_rows_s``: the second and third, its buffers already
allocated); the side that goes first alternates by round. Reported: medians and after / before ratios.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import tyro

REPO = Path(__file__).resolve().parents[1]

_WORKLOAD = r"""
import json, statistics, sys, time
import numpy as np, torch, actstore
path, n_rows, codec, d = sys.argv[1], int(sys.argv[2]), sys.argv[3], 2048
rows = (np.random.default_rng(0).standard_normal((n_rows, d), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
acts = torch.from_numpy(rows).view(torch.bfloat16)
t0 = time.perf_counter()
with actstore.create(path, overwrite=True, codec=codec) as w:
    for lo in range(0, n_rows, 1024):
        n = min(1024, n_rows - lo)
        w.append("decision", rows={"sample": np.arange(lo, lo + n) // 100, "step": np.zeros(n, np.int64),
                                   "position": np.arange(n) % 100}, acts={0: acts[lo:lo + n]})
out = {"write_s": time.perf_counter() - t0}
with actstore.open(path, cache_bytes=0) as store:
    view = store[0, "decision"]
    t0 = time.perf_counter(); whole = view[:]; out["read_s"] = time.perf_counter() - t0
    assert torch.equal(whole.view(torch.uint16), torch.from_numpy(rows))
    times = []
    for i in np.random.default_rng(1).integers(0, n_rows, size=200):
        t0 = time.perf_counter(); view[int(i)]; times.append(time.perf_counter() - t0)
    out["row_p50_s"] = statistics.median(times)
    loader = store.loader(0, "decision", batch_size=4096, seed=1)
    t0 = time.perf_counter()
    n = sum(int(b.shape[0]) for b in loader)
    t1 = time.perf_counter()
    n2 = sum(int(b.shape[0]) for _ in range(2) for b in loader)
    t2 = time.perf_counter()
    out["epoch_rows_s"] = (n + n2) / (t2 - t0)
    out["steady_rows_s"] = n2 / (t2 - t1)
print(json.dumps(out))
"""


def _measure(tree: Path, store: Path, n_rows: int, codec: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", _WORKLOAD, str(store), str(n_rows), codec], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tree)},
                          cwd=tree, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"the workload failed under {tree}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(base: str, smoke: bool = False, size_mib: int = 128, rounds: int = 5, codec: str = "lz4",
         out: Path | None = None) -> dict[str, Any]:
    """Time the workload under ``base`` (a git revision) and under the working tree.

    Args:
        base: the "before" revision (anything ``git worktree add`` takes).
        smoke: tiny sizes, finishes in seconds.
        size_mib: store size (bf16 rows of d=2048).
        rounds: interleaved rounds (median reported).
        codec: the store's codec (one both revisions know).
        out: write the results as JSON here.
    """
    if smoke:
        size_mib, rounds = 4, 2
    n_rows = size_mib * (1 << 20) // (2 * 2048)
    rev = subprocess.run(["git", "rev-parse", "--short", base], cwd=REPO, capture_output=True, text=True, check=True)
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(before), base], cwd=REPO, check=True)
        try:
            trees = {"before": before, "after": REPO}
            for i in range(rounds):
                for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
                    runs[side].append(_measure(trees[side], Path(tmp) / f"{side}.zarr", n_rows, codec))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, check=False)
    med = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for side, rs in runs.items()}
    ratio = {k: med["after"][k] / med["before"][k] for k in med["after"]}
    res = {"base": rev.stdout.strip(), "rows": n_rows, "rounds": rounds, "codec": codec, "runs": runs, "median": med,
           "ratio": ratio}
    print(f"# before ({res['base']}) vs after (working tree), {size_mib} MiB bf16 d=2048, codec {codec}, {rounds} rounds\n")
    print("| measure | before | after | after / before |")
    print("|---|---|---|---|")
    for k, v in ratio.items():
        print(f"| {k} | {med['before'][k]:.4g} | {med['after'][k]:.4g} | {v:.3f} |")
    if out is not None:
        out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    tyro.cli(main)
