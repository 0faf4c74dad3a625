"""Each capture benchmark runs once, tiny (--smoke)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("actstore")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_benchmark_smoke(capsys):
    result = _load("bench_capture_cpu").main(["--smoke"])
    assert result["ratio"] > 0 and result["bytes"] > 0
    assert "ratio" in capsys.readouterr().out


def test_gpu_benchmark_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    result = _load("bench_capture_gpu").main(["--smoke", "--compare-nonfinite", "--out", str(out)])
    assert set(result["modes"]) == {"none", "recorder", "recorder_allow", "detach_cpu", "cpu_save"}
    rec = json.loads(out.read_text())["modes"]["recorder"]
    assert rec["bytes"] > 0 and rec["rows_stored"] == rec["rows_expected"] > 0
