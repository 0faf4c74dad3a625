"""The CLI: every subcommand through ``main()``, one-line errors (2: bad arguments, 1: failures), what --help and
info import, and the README walkthrough run end to end."""

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


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("actstore: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "expected one of"),
        (["bogus"], "bogus"),
        (["info"], "info --help"),
        (["info", "{store}", "--jsn"], "--jsn"),
        (["plot", "{store}"], "--layer"),
        (["plot", "{store}", "--layer", "6", "--kind", "pie"], "'pie'"),
        (["plot", "{store}", "--layer", "6", "--max-rows", "many"], "--max-rows"),
        (["export", "{store}"], "--to"),
        (["export", "{store}", "--to", "csv"], "'csv'"),
        (["export", "{store}", "--to", "h5", "--layer", "6"], "whole store"),
        (["export", "{store}", "--to", "npy", "--codec", "none"], "--codec"),
        (["lens", "{store}"], "--layer"),
        (["lens", "{store}", "--layer", "6", "--head", "expert_lm_head"], "--allow-untrained"),
        (["lens", "{store}", "--layer", "6", "--k", "x"], "--k"),
        (["verify"], "verify --help"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                            needle: str) -> None:
    """Every subcommand: a command line refused before the store is read -> one line on stderr, status 2."""
    store = tmp_path / "run.zarr"
    write_store(store, n_samples=4)
    capsys.readouterr()
    assert main([a.replace("{store}", str(store)) for a in argv]) == 2
    line = _err_line(capsys)
    assert needle.lower() in line.lower(), line


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["info", "{missing}"], "no store"),
        (["info", "{junk}"], "not an actstore store"),
        (["plot", "{store}", "--layer", "15"], "no layer 15"),
        (["plot", "{store}", "--layer", "6", "--role", "nope"], "no role 'nope'"),
        (["export", "{missing}", "--to", "h5"], "no store"),
        (["export", "{store}", "--to", "npy", "--layer", "7"], "no layer 7"),
        (["export", "{store}", "--to", "h5", "--out", "{store}"], "onto itself"),
        (["lens", "{missing}", "--layer", "6"], "no store"),
    ],
)
def test_failures_exit_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                       needle: str) -> None:
    """Every subcommand: a well-formed command that fails on the data -> one line on stderr, status 1."""
    store = tmp_path / "run.zarr"
    write_store(store, n_samples=4)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    capsys.readouterr()
    paths = {"{store}": str(store), "{missing}": str(tmp_path / "missing.zarr"), "{junk}": str(tmp_path / "junk")}
    code = main([paths.get(a, a) for a in argv])
    line = _err_line(capsys)
    assert needle.lower() in line.lower(), line
    assert code == (2 if needle == "onto itself" else 1)


def test_verify_problems_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "run.zarr"
    write_store(store, n_samples=4)
    chunk = next(p for p in sorted(store.rglob("*")) if p.is_file() and "/c/" in str(p) and "acts" in str(p))
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    assert main(["verify", str(store)]) == 1
    assert main(["verify", str(tmp_path / "missing.zarr")]) == 1  # a report, not an exception
    assert "no store" in capsys.readouterr().out


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    import actstore

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"actstore {actstore.__version__}"
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("info", "plot", "export", "lens", "verify"):
        assert name in out


def _modules_after(code: str) -> set[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    probe = code + "\nimport sys\nprint('\\nloaded:', *(m for m in ('torch', 'zarr', 'matplotlib', 'h5py') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.rsplit("loaded:", 1)[1].split())


def test_cli_help_version_do_not_import_torch() -> None:
    cli = "from actstore.__main__ import main\ntry:\n    main({argv})\nexcept SystemExit:\n    pass\n"
    assert _modules_after(cli.format(argv=["--version"])) == set()
    assert _modules_after(cli.format(argv=["--help"])) == set()
    assert _modules_after(cli.format(argv=["info", "--help"])) == set()


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
