"""benchmarks/bench_peers.py runs small (--smoke): every peer delivers every row once, rows are bit-exact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_peers_smoke(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_peers", "--smoke", "--out", str(out),
                           "--data-dir", str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["all_checks_passed"] and res["rows"] == 8192
    names = set(res["systems"])
    assert {"actstore lz4", "actstore none", "zarr-python, same shards + codec", "np.memmap (saev style)",
            "h5py + hdf5plugin blosc, same codec", "safetensors per batch", "torch.save per batch"} <= names
    for name, m in res["systems"].items():
        assert res["checks"][name] == {"every_row_once": True, "row_exact": True}, name  # bit-exact round trip
        assert m["rows_per_s"] > 0 and m["row_p50_ms"] > 0 and m["bytes"] > 0, name
        assert all(r["rows_loaded"] == 8192 for r in m["runs"]), name
    lz4, none = res["systems"]["actstore lz4"], res["systems"]["actstore none"]
    assert lz4["vs_actstore_lz4"] == {"write": 1.0, "size": 1.0, "loader": 1.0, "cpu": 1.0, "row_p50": 1.0}
    assert lz4["ratio"] > 1.1 > none["ratio"]  # the synthetic bf16 rows compress under lz4 + bitshuffle
    assert "| actstore lz4 |" in proc.stdout and out.with_suffix(".md").exists()
    assert any(k.startswith("SAELens") for k in res["skipped"]) and res["saelens"].startswith("not measured")
