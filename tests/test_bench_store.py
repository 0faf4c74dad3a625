"""The store benchmark runs end to end at smoke size, prints its table and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(240)
def test_bench_store_smoke(tmp_path: Path) -> None:
    out = tmp_path / "store.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_store", "--smoke", "--data-dir", str(tmp_path / "data"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| metric | actstore | baseline(s) | ratio | target | met? |" in proc.stdout
    for metric in ("write GB/s, codec lz4", "read seq GB/s", "random row p50 ms", "random rows v[idx]", "bit-exact"):
        assert metric in proc.stdout
    res = json.loads(out.read_text())
    assert all(res["bit_exact"].values())
    for codec in ("lz4", "zstd", "bytesplit", "none"):
        assert res["write"][f"actstore_{codec}"]["median"] > 0
        assert res["write"][f"actstore_{codec}"]["ratio"] >= 0.99
    assert res["read"]["row_p50_nocache"]["median"] > 0
    peers = res["peers"]  # every peer on the same rows, in the same run, each round trip checked bit for bit
    assert {"actstore lz4", "actstore none", "zarr-python, same shards + codec", "h5py + hdf5plugin blosc, same codec",
            "safetensors per batch", "torch.save per batch", "np.memmap (saev style)"} <= set(peers["systems"])
    assert peers["all_checks_passed"] and peers["rows"] == 8192
    for name, m in peers["systems"].items():
        assert peers["checks"][name] == {"every_row_once": True, "row_exact": True}, name
        assert m["write_GB_per_s"] > 0 and m["bytes"] > 0 and m["row_p50_ms"] > 0, name
        assert set(m["vs_actstore_lz4"]) == {"write", "size", "row_p50"}, name
    assert peers["systems"]["actstore lz4"]["vs_actstore_lz4"] == {"write": 1.0, "size": 1.0, "row_p50": 1.0}
    assert any(k.startswith("SAELens") for k in peers["skipped"])  # no --saelens-python: skipped with the reason
    assert "| np.memmap (saev style) |" in proc.stdout and "| random row p50 ms (ratio) |" in proc.stdout
    assert not (tmp_path / "data" / "bench_store").exists()  # scratch stores are removed


def test_data_gen_is_deterministic_and_activation_like(tmp_path: Path) -> None:
    import numpy as np

    from benchmarks._data_gen import ActGenerator, ActProfile, cached_rows, describe

    profile = ActProfile(d=256, seq_len=64)
    gen = ActGenerator(profile)
    a = gen.bits(100, 300)
    assert a.dtype == np.uint16 and a.shape == (300, 256)
    assert np.array_equal(a, ActGenerator(profile).bits(100, 300))
    rows = cached_rows(tmp_path, 1024, profile)
    assert np.array_equal(rows[100:400], a)  # slices are regenerated independently of the block size
    assert np.array_equal(cached_rows(tmp_path, 1024, profile), rows)  # reused, not regenerated
    stats = describe(rows, profile.seq_len)
    assert stats["dims_std_gt_10x_median"] >= 3
    assert stats["bos_norm_median"] > 5 * stats["token_norm_median"]
