"""The single-row latency benchmark runs (smoke size) and reports idle and busy figures for every reader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_row_latency_smoke(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    subprocess.run([sys.executable, "-m", "benchmarks.bench_row_latency", "--smoke", "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    got = json.loads(out.read_text())
    assert set(got["cases"]) == {"actstore lz4", "actstore none", "np.memmap", "h5py blosc lz4"}
    for case in got["cases"].values():
        assert case["idle"]["p50_ms"] > 0 and case["busy"]["p50_ms"] > 0 and case["busy"]["n"] == 30
