"""The HDF5 checksum benchmark runs (smoke size) and reports both reads for both codecs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_h5_checksum_smoke(tmp_path: Path) -> None:
    out = tmp_path / "h5.json"
    subprocess.run([sys.executable, "-m", "benchmarks.bench_h5_checksum", "--smoke", "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    got = json.loads(out.read_text())
    assert set(got["codecs"]) == {"lz4", "none"}
    for r in got["codecs"].values():
        assert r["gb_per_s"]["checked"] > 0 and r["gb_per_s"]["unchecked"] > 0 and len(r["seconds"]["checked"]) == 2
