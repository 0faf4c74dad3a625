"""The CLI: every subcommand through ``main()``, errors -> exit 2, and the README walkthrough run end to end."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_store

from actstore.__main__ import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _walkthrough() -> str:
    """The README's walkthrough section (between its markers)."""
    text = README.read_text()
    start, end = text.index("<!-- WALKTHROUGH-START -->"), text.index("<!-- WALKTHROUGH-END -->")
    return text[start:end]


def test_plot_export_verify_through_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_store(tmp_path / "run.zarr")
    assert main(["plot", str(tmp_path / "run.zarr"), "--layer", "6", "--role", "decision", "--kind", "norms"]) == 0
    png = tmp_path / "run.decision.6.norms.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["export", str(tmp_path / "run.zarr"), "--to", "h5", "--no-progress"]) == 0
    assert (tmp_path / "run.h5").is_file()
    assert main(["export", str(tmp_path / "run.zarr"), "--to", "npy", "--layer", "10", "--step", "1"]) == 0
    assert (tmp_path / "run.npy" / "manifest.json").is_file()
    try:
        import actstore._verify  # noqa: F401
    except ImportError:
        pytest.skip("actstore._verify is not there yet")
    assert main(["verify", str(tmp_path / "run.h5")]) == 0


def test_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_store(tmp_path / "run.zarr")
    assert main(["plot", str(tmp_path / "run.zarr"), "--layer", "15"]) == 2
    assert "no layer 15" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.zarr")]) == 2
    assert main(["export", str(tmp_path / "run.zarr"), "--to", "h5", "--layer", "6"]) == 2
    assert "whole store" in capsys.readouterr().err


def test_lens_refuses_untrained_head_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_store(tmp_path / "run.zarr")
    assert main(["lens", str(tmp_path / "run.zarr"), "--layer", "6", "--head", "expert_lm_head"]) == 2
    err = capsys.readouterr().err
    assert "untrained" in err or "random weights" in err
    assert "--allow-untrained" in err


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _command(line: str) -> list[str]:
    argv = shlex.split(line)
    if argv[0] == "actstore":
        return [sys.executable, "-m", "actstore", *argv[1:]]
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
        return [str(REPO / a) if a.startswith("examples/") else a for a in argv]
    raise AssertionError(f"walkthrough command not understood: {line}")


@pytest.mark.slow
def test_walkthrough_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ```bash and ```python block of the README's walkthrough, in order, in a scratch directory."""
    text = _walkthrough()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    bash = [line for block in _blocks(text, "bash") for line in block.splitlines() if line.strip()]
    assert len(bash) >= 10
    py = _blocks(text, "python")
    # the Python block follows the lens commands; run it right after them
    for line in bash:
        proc = subprocess.run(_command(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        if line.startswith("actstore info") and "--json" in line:
            assert json.loads(proc.stdout)["layers"] == [6, 10, 14]
        if line.startswith("actstore lens") and "vlm_lm_head" in line:
            for code in py:
                exec(compile(code, str(README), "exec"), {"__name__": "walkthrough"})
    for fig in ("figures/decision_layer14.png", "figures/instruction_layer14.png"):
        assert (tmp_path / fig).stat().st_size > 10_000
    assert (tmp_path / "runs" / "demo.h5").is_file()
    assert (tmp_path / "runs" / "demo_l14.safetensors").stat().st_size > 0
    for fig in re.findall(r"\]\((docs/figures/[^)]+)\)", text):
        assert (REPO / fig).stat().st_size > 10_000, f"README figure {fig} is missing"
