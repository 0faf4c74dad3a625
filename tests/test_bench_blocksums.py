"""The block-sums benchmark runs (smoke size) and reports every ratio for both codecs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_blocksums_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bs.json"
    subprocess.run([sys.executable, "-m", "benchmarks.bench_blocksums", "--smoke", "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    got = json.loads(out.read_text())
    assert set(got["codecs"]) == {"lz4", "none"}
    for r in got["codecs"].values():
        assert set(r["ratio"]) == {"write_time", "read_time", "row_p50", "epoch_rows_s"} and r["check_us_per_block"] > 0
        assert all(v > 0 for v in r["ratio"].values()) and r["sums_bytes"] > 0
