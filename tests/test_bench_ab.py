"""The before / after benchmark runs (smoke size) against the previous commit and reports every ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_ab_smoke(tmp_path: Path) -> None:
    out = tmp_path / "ab.json"
    subprocess.run([sys.executable, "-m", "benchmarks.bench_ab", "--base", "HEAD", "--smoke", "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=900)
    got = json.loads(out.read_text())
    assert set(got["ratio"]) == {"write_s", "read_s", "row_p50_s", "epoch_rows_s", "steady_rows_s"}
    assert all(v > 0 for v in got["ratio"].values()) and len(got["runs"]["before"]) == 2
