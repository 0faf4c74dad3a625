"""The feature-pass benchmark runs end to end at smoke size, prints its table and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(240)
def test_bench_features_smoke(tmp_path: Path) -> None:
    out = tmp_path / "features.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_features", "--smoke", "--work-dir", str(tmp_path), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=230,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| SAE | path | rows/s | GB/s read | ratio to loader | target |" in proc.stdout
    assert "| feature_pass |" in proc.stdout
    res = json.loads(out.read_text())
    assert res["rows"] >= 4 * 1024  # whole samples of 10 steps x 50 tokens
    assert set(res["configs"]) == {"light", "realistic"}
    for name, c in res["configs"].items():
        assert set(c["rows_per_s"]) == {"loader", "feature_pass", "encode_only"}
        assert c["pass_vs_loader"] > 0
        assert c["sae_bound"] == (c["rows_per_s"]["encode_only"] < 2 * c["rows_per_s"]["loader"])
        assert f"\n{name}: the SAE is " in proc.stdout  # each configuration says whether the SAE is the bottleneck
    assert res["configs"]["light"]["d_sae"] < res["configs"]["realistic"]["d_sae"]
