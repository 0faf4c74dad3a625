"""The writer-ingest benchmark runs (smoke size) and accounts each case's CPU by thread."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_writer_smoke(tmp_path: Path) -> None:
    out = tmp_path / "writer.json"
    subprocess.run([sys.executable, "-m", "benchmarks.bench_writer", "--smoke", "--data", str(tmp_path / "data"),
                    "--out", str(out)], cwd=REPO, check=True, capture_output=True, timeout=600)
    got = json.loads(out.read_text())
    modes = {(c["codec"], c["mode"]) for c in got["cases"].values()}
    assert modes == {(codec, mode) for codec in ("lz4", "none") for mode in ("idle", "torch", "python")}
    for case in got["cases"].values():
        cpu = case["cpu_s_per_GB"]
        assert case["GB_per_s"] > 0 and cpu["writer_thread"] > 0 and cpu["total"] >= cpu["writer_thread"]
        assert ("rival_slowdown" in case) == (case["mode"] != "idle")
    assert set(got["raw_write"]) == {str(c["threads"]) for c in got["cases"].values()}
    assert got["first_raw_write"]["GB_per_s"] > 0 and "dir" not in got["first_raw_write"]
    assert all(c["vs_plain_files"] > 0 and c["system_s_per_GB"] >= 0 for c in got["cases"].values())
    for p in got["projection"].values():
        assert 0 < p["GB_per_s"] <= p["serial_bound_GB_per_s"]
    assert out.with_suffix(".md").read_text().startswith("Writer ingest")
