"""The codec benchmark runs (smoke size) and reports every codec, with ratios to lz4 and the NaN/Inf cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import actstore

REPO = Path(__file__).resolve().parents[1]


def test_bench_codec_smoke(tmp_path: Path) -> None:
    out = tmp_path / "codec.json"
    subprocess.run([sys.executable, "-m", "benchmarks.bench_codec", "--smoke", "--rounds", "1", "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    got = json.loads(out.read_text())
    table = got["codecs"]["synthetic"]
    assert set(table) == set(actstore.CODECS) == set(got["nonfinite_chunks"])
    assert all(0 < r["check_share"] < 1 for r in got["nonfinite_chunks"].values())
    assert table["lz4"]["vs_lz4"] == {"ratio": 1.0, "encode_GB_s": 1.0, "decode_GB_s": 1.0}
    assert table["none"]["ratio"] < 1.0 < table["lz4"]["ratio"] < table["bytesplit"]["ratio"]
    assert all(r["encode_GB_s"] > 0 and r["decode_GB_s"] > 0 for r in table.values())
    assert got["top_plane"]["top_plane_values_per_s"] > 0 and got["top_plane"]["lz4_values_per_s"] > 0
    assert got["nonfinite_write"]["count_s"] > 0 and got["nonfinite_write"]["allow_s"] > 0
