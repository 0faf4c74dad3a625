"""benchmarks/bench_gather.py runs small (--smoke): both gathers deliver the same rows and every figure is there."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_gather import Config, main


def test_bench_gather_smoke(tmp_path: Path) -> None:
    res = main(Config(smoke=True, data=str(tmp_path / "data"), out=str(tmp_path / "gather.json")))
    assert set(res) >= {"lz4:idle", "none:idle", "lz4:torch", "none:torch"}
    for key in ("lz4:idle", "none:idle", "lz4:torch", "none:torch"):
        r = res[key]
        assert set(r["rows_per_s"]) == {"np_take", "torch_index_select"}
        assert all(v > 0 for v in r["rows_per_s"].values()) and r["np_take_vs_index_select"] > 0
        assert all(len(v) == 1 for v in r["all_rows_per_s"].values())
    assert (tmp_path / "gather.json").exists()
