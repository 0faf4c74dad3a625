"""The shuffle benchmark runs end to end at smoke size, prints its tables and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(240)
def test_bench_shuffle_smoke(tmp_path: Path) -> None:
    out = tmp_path / "shuffle.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_shuffle", "--smoke", "--work-dir", str(tmp_path), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=230,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| path | rows/s | GB/s | ratio to export | target |" in proc.stdout
    assert "| after actstore shuffle |" in proc.stdout
    res = json.loads(out.read_text())
    assert res["shuffle_vs_export"] > 0
    assert set(res["mixing"]) == {"batch_size", "rows_per_sample", "default_loader_original",
                                  "default_loader_shuffled", "uniform_permutation"}
