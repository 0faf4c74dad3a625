"""benchmarks/bench_loader.py runs small (--smoke) as the docs run it, with every peer's shuffled pass beside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = {"actstore lz4", "actstore none", "zarr-python, same shards + codec", "h5py + hdf5plugin blosc, same codec",
         "safetensors per batch", "torch.save per batch", "np.memmap (saev style)"}


@pytest.mark.timeout(180)
def test_bench_loader_smoke(tmp_path: Path) -> None:
    out = tmp_path / "loader.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_loader.py"), "--smoke", "--data",
                           str(tmp_path / "data"), "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for key in ("memmap_gather", "torch_load", "zarr_python", "actstore", "actstore_none"):  # the keys docs read
        assert res[key]["rows_per_s"] > 0, key
    steady = res["steady"]  # long-lived loaders and memmap, each a whole epoch per round
    for key in ("memmap", "actstore_lz4", "actstore_none"):
        assert steady[key]["rows_per_s"] > 0 and len(steady[key]["all_rows_per_s"]) == steady["rounds"] == 1, key
    assert steady["memmap"]["vs_memmap"] == 1.0
    assert "Steady state (one loader / memmap kept across epochs" in proc.stdout
    peers = res["peers"]
    assert set(peers["systems"]) >= PEERS and peers["all_checks_passed"]
    assert peers["rows"] == res["n_rows"] == 8192 and peers["d"] == res["d"]
    for name, m in peers["systems"].items():  # every row delivered exactly once, bit-exact, by every peer
        assert peers["checks"][name] == {"every_row_once": True, "row_exact": True}, name
        assert m["rows_per_s"] > 0 and m["cpu_s_per_M_rows"] > 0, name
        assert all(r["rows_loaded"] == 8192 for r in m["runs"]), name
        assert set(m["vs_actstore_lz4"]) == {"loader", "cpu"}, name
    assert peers["systems"]["actstore lz4"]["vs_actstore_lz4"] == {"loader": 1.0, "cpu": 1.0}
    assert any(k.startswith("SAELens") for k in peers["skipped"])  # no --saelens-python: skipped with the reason
    assert "| system | shuffled loader rows/s (ratio) | CPU s per M rows (ratio) |" in proc.stdout
    assert "| np.memmap (saev style) |" in proc.stdout
    assert not (tmp_path / "data" / "smoke" / "peers").exists()  # the peers' scratch copies are removed
