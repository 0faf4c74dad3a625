"""benchmarks/bench_sae.py runs small (--smoke) and reports both paths, agreeing within float tolerance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_sae_smoke(tmp_path: Path) -> None:
    out = tmp_path / "sae.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_sae", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert [r["d"] for r in res["results"]] == [32, 64]
    for r in res["results"]:
        assert r["sparse"]["tokens_per_s"] > 0 and r["dense"]["tokens_per_s"] > 0
        assert set(r["max_rel_diff"]) == {"x_hat", "W_enc", "W_dec", "b_enc", "b_dec"}
        assert max(r["max_rel_diff"].values()) < 1e-4
    assert "| 64 | 512 |" in proc.stdout and out.with_suffix(".md").exists()
