"""The scale benchmark runs end to end at smoke size, prints its tables and writes every field of its JSON; the
filters read only the chunks that can match (counted against the generator's own columns), fewer than the store
has for a sample filter, and an unfiltered epoch reads no row table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_scale import Layout

ROOT = Path(__file__).resolve().parents[1]

PROBE_FIELDS = {"baseline_rss", "hwm_reset", "open_s", "rss_open", "n_chunks", "peak_rss", "chunks_read",
                "full_reads"}


@pytest.mark.timeout(120)
def test_bench_scale_smoke(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scale", "--smoke", "--work-dir", str(tmp_path), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| rows | chunks | open | first batch after open |" in proc.stdout
    assert "# bytes of RSS growth per row" in proc.stdout
    res = json.loads(out.read_text())
    assert {"d", "dtype", "codec", "chunk_rows", "layout", "batch_size", "sizes", "slopes", "mixing"} <= set(res)
    (r,) = res["sizes"]
    assert set(r) == {"rows", "write_s", "stored_bytes", "epoch", "select_step", "select_sample", "select_position",
                      "table"}
    assert PROBE_FIELDS | {"first_batch_s", "rss_first_batch", "epoch_s", "epoch_rows", "plan_bytes",
                           "rows_ok"} <= set(r["epoch"])
    assert PROBE_FIELDS | {"table_s", "rss_table", "old_select_s", "selected_rows"} <= set(r["table"])
    n_chunks = -(-r["rows"] // res["chunk_rows"])
    assert r["epoch"]["n_chunks"] == n_chunks
    assert r["epoch"]["rows_ok"] and r["epoch"]["epoch_rows"] == r["rows"]
    assert r["epoch"]["chunks_read"] == 0 and r["epoch"]["full_reads"] == 0  # no row table for an epoch
    assert r["table"]["full_reads"] == 1
    for column in ("step", "sample", "position"):
        s = r[f"select_{column}"]
        assert PROBE_FIELDS | {"select_s", "selected_rows", "rss_select", "values", "chunks_holding",
                               "chunks_minmax_can_match", "fraction_read"} <= set(s)
        assert s["full_reads"] == 0
        # only the chunks that can match, and the last, partial chunk (its statistics are computed from it)
        assert s["chunks_minmax_can_match"] <= s["chunks_read"] <= s["chunks_minmax_can_match"] + (r["rows"] % res["chunk_rows"] > 0)
        assert s["chunks_holding"] <= s["chunks_minmax_can_match"]
    assert r["select_sample"]["chunks_read"] < n_chunks  # the filter skipped chunks
    cols = Layout(**res["layout"]).columns(0, r["rows"])
    assert r["select_step"]["selected_rows"] == r["table"]["selected_rows"] == int(np.sum(cols["step"] == 3))
    for column in ("sample", "position"):
        s = r[f"select_{column}"]
        assert s["selected_rows"] == int(np.isin(cols[column], s["values"]).sum())
    assert set(res["slopes"]) == {f"at_{r['rows']:.0e}"}
    m = res["mixing"]["samples_of_100_consecutive_rows"]
    assert {"default_loader", "default_loader_last_buffer", "uniform_permutation",
            "default_loader_batches_per_buffer"} <= set(m)
    counts = m["default_loader_batches_per_buffer"]
    assert sum(counts) == m["default_loader"]["batches"]
    assert max(counts) - min(counts) <= 1  # balanced: no buffer of leftovers
    assert 0 < m["default_loader"]["distinct_samples_per_batch"] <= m["batch_size"]


def test_layout_is_capture_order() -> None:
    """Forward batches of 2 samples, step by step, 3 positions: the order a capture writes."""
    cols = Layout(batch_samples=2, steps=2, positions=3).columns(0, 14)
    assert cols["sample"].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 2, 2]
    assert cols["step"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    assert cols["position"].tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1]
    sub = Layout(batch_samples=2, steps=2, positions=3).columns(5, 14)
    assert all(np.array_equal(sub[k], cols[k][5:]) for k in cols)
