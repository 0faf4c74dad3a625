"""``actstore info``: the rich summary and ``--json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_store

from actstore.__main__ import main


def test_info_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_store(tmp_path / "run.zarr")
    assert main(["info", str(tmp_path / "run.zarr")]) == 0
    out = capsys.readouterr().out
    for text in ("decision", "instruction", "adarms", "bfloat16", "lz4", "0..3", "stored"):
        assert text in out


def test_info_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    write_store(store_path)
    assert main(["info", str(store_path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["layers"] == [6, 10] and s["samples"] == 24
    roles = {r["role"]: r for r in s["roles"]}
    assert roles["decision"]["rows"] == 24 * 4 * 5 and roles["decision"]["steps"] == [0, 1, 2, 3]
    assert roles["instruction"]["steps"] == []
    assert {e["layer"]: e["d"] for e in roles["decision"]["layers"]} == {6: 32, 10: 32}
    assert s["stored_bytes"] > 0 and s["ratio"] == pytest.approx(s["raw_bytes"] / s["stored_bytes"])
    assert s["conds"] == [{"cond": "adarms", "rows": 96, "d": 32, "dtype": "float32"}]
    assert s["attrs"]["model"] == {"name": "test"}
