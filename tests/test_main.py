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
        import actstore.tools._verify  # noqa: F401
    except ImportError:
        pytest.skip("actstore.tools._verify is not there yet")
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
        (["shuffle", "{store}", "--seed", "-1"], "seed"),
        (["shuffle", "{store}", "--codec", "gzip"], "'gzip'"),
        (["features", "{store}", "--layer", "6"], "--sae"),
        (["features", "{store}", "--sae", "{sae}", "--layer", "6"], "--k"),
        (["features", "{store}", "--sae", "{sae}", "--layer", "6", "--kind", "topk"], "--k"),
        (["features", "{store}", "--sae", "{sae}", "--layer", "6", "--k", "3", "--name", "../x"], "'../x'"),
        (["dashboard", "{store}"], "--features"),
        (["dashboard", "{store}", "--features", "f", "--top", "0"], "top"),
        (["dashboard", "{store}", "--features", "f", "--tokenizer", "bpe"], "'bpe'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                            needle: str) -> None:
    """Every subcommand: a command line refused before the store is read -> one line on stderr, status 2."""
    store = tmp_path / "run.zarr"
    write_store(store, n_samples=4)
    sae = _sae_file(tmp_path / "sae.safetensors", d=32)
    capsys.readouterr()
    assert main([a.replace("{store}", str(store)).replace("{sae}", str(sae)) for a in argv]) == 2
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
        (["shuffle", "{missing}"], "no store"),
        (["shuffle", "{store}", "--out", "{store}"], "onto itself"),
        (["shuffle", "{store}", "--out", "{junk}"], "already exists"),
        (["features", "{missing}", "--sae", "{sae}", "--layer", "6", "--k", "3"], "no store"),
        (["features", "{store}", "--sae", "{missing}", "--layer", "6", "--k", "3"], "no sae file"),
        (["features", "{store}", "--sae", "{sae}", "--layer", "7", "--k", "3"], "no layer 7"),
        (["features", "{store}", "--sae", "{wide}", "--layer", "6", "--k", "3"], "d_in 33"),
        (["dashboard", "{store}", "--features", "nope"], "groups are"),
        (["dashboard", "{missing}", "--features", "nope"], "no store"),
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
    paths = {"{store}": str(store), "{missing}": str(tmp_path / "missing.zarr"), "{junk}": str(tmp_path / "junk"),
             "{sae}": str(_sae_file(tmp_path / "sae.safetensors", d=32)),
             "{wide}": str(_sae_file(tmp_path / "wide.safetensors", d=33))}
    code = main([paths.get(a, a) for a in argv])
    line = _err_line(capsys)
    assert needle.lower() in line.lower(), line
    assert code == (2 if needle == "onto itself" and argv[0] == "export" else 1)


def test_lens_without_capture_exits_1_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """actstore never needs capture except for ``lens`` (model layouts and lenses live there): with capture not
    importable, ``lens`` fails with one line naming it and ``info`` still works."""
    store = tmp_path / "run.zarr"
    write_store(store, n_samples=4)
    monkeypatch.setitem(sys.modules, "capture", None)  # what `import capture` sees when it is not installed
    capsys.readouterr()
    assert main(["lens", str(store), "--layer", "6"]) == 1
    line = _err_line(capsys)
    assert "'actstore lens' needs the capture package" in line, line
    assert main(["info", str(store), "--json"]) == 0


def _sae_file(path: Path, *, d: int, m: int = 48, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, d, generator=g) / d**0.5
    save_file({"W_enc": w.t().contiguous(), "W_dec": w, "b_enc": torch.randn(m, generator=g) * 0.1,
               "b_dec": torch.zeros(d)}, str(path))
    return path


def test_features_and_shuffle_through_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """features writes the group the Python pass writes (same arrays); a rerun is refused until --overwrite; an
    interrupted pass resumes; shuffle writes a permuted copy (same rows as a multiset, same row table)."""
    import numpy as np
    import torch

    import actstore
    from actstore.tools._features_pass import FeaturePassConfig, feature_pass

    store = tmp_path / "run.zarr"
    write_store(store, n_samples=12, dtype=torch.float32)
    sae = _sae_file(tmp_path / "sae.safetensors", d=32)
    argv = ["features", str(store), "--sae", str(sae), "--layer", "6", "--role", "decision", "--name", "sae6",
            "--k", "4", "--top-k", "8", "--batch-rows", "64", "--no-progress"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(store / "derived" / "sae6")
    with actstore.ActStore.open(store) as s:
        feature_pass(s, sae, FeaturePassConfig(layer=6, name="ref", top_k=8, batch_rows=64), k=4, progress=False)
        got, ref = s.features("sae6"), s.features("ref")
        assert got.record["sae"]["k"] == 4 and got.role == "decision" and got.layer == 6
        for key in ref.record["arrays"]:
            np.testing.assert_array_equal(got.array(key), ref.array(key), err_msg=key)
        # a killed pass leaves a checkpoint; the CLI continues it to the same arrays
        feature_pass(s, sae, FeaturePassConfig(layer=6, name="resumed", top_k=8, batch_rows=64, checkpoint_every=1),
                     k=4, progress=False, stop_after=2)
    assert (store / "derived" / "resumed.partial").is_dir()
    assert main([("resumed" if a == "sae6" else a) for a in argv]) == 0
    capsys.readouterr()
    with actstore.ActStore.open(store) as s:
        for key in ref.record["arrays"]:
            np.testing.assert_array_equal(s.features("resumed").array(key), ref.array(key), err_msg=key)
    assert main(argv) == 1
    assert "--overwrite" in _err_line(capsys)
    assert main([*argv, "--overwrite"]) == 0
    assert main(["verify", str(store)]) == 0  # the derived group does not disturb the store
    capsys.readouterr()

    assert main(["shuffle", str(store), "--out", str(tmp_path / "shuf.zarr"), "--seed", "3", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "shuf.zarr")
    with actstore.ActStore.open(store) as a, actstore.ActStore.open(tmp_path / "shuf.zarr") as b:
        x, y = a[6, "decision"][:].numpy(), b[6, "decision"][:].numpy()
        assert not np.array_equal(x, y)
        key = np.lexsort(x.T[::-1])
        np.testing.assert_array_equal(x[key], y[np.lexsort(y.T[::-1])])
        ra, rb = a.rows("decision"), b.rows("decision")
        perm = np.lexsort(y.T[::-1])[np.argsort(key)]  # row i of a is row perm[i] of b
        for col in ("sample", "step", "position"):
            np.testing.assert_array_equal(ra[col], rb[col][perm])
    assert main(["shuffle", str(store), "--no-progress"]) == 0
    assert (tmp_path / "run.shuffled.zarr").is_dir()
    capsys.readouterr()

    site = tmp_path / "site"
    assert main(["dashboard", str(store), "--features", "sae6", "--out", str(site), "--top", "5", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(site / "index.html")
    with actstore.ActStore.open(store) as s:
        best = int(np.argmax(s.features("sae6").array("count")))
        rows = s.features("sae6").top(best, 5).row
    page = (site / "f" / f"{best}.html").read_text()
    assert [int(r) for r in re.findall(r'data-row="(\d+)"', page)] == rows.tolist()
    assert main(["dashboard", str(store), "--features", "sae6", "--out", str(site), "--no-progress"]) == 1
    assert "--overwrite" in _err_line(capsys)
    assert main(["dashboard", str(store), "--features", "sae6", "--out", str(site), "--overwrite",
                 "--no-progress"]) == 0
    assert main(["dashboard", str(store), "--features", "sae6", "--no-progress"]) == 0
    assert (tmp_path / "run.zarr.sae6.site" / "index.html").is_file()


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
    for name in ("info", "plot", "export", "lens", "verify", "shuffle", "features", "dashboard"):
        assert name in out


def _modules_after(code: str) -> set[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    probe = code + "\nimport sys\nprint('\\nloaded:', *(m for m in ('torch', 'zarr', 'matplotlib', 'h5py') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.rsplit("loaded:", 1)[1].split())


@pytest.mark.parametrize("sub", ["info", "plot", "export", "lens", "verify", "shuffle", "features", "dashboard"])
def test_usage_lines_name_the_store_and_hold_no_paths(sub: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([sub, "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert usage.startswith(f"usage: actstore {sub} ") and "STORE" in usage and " STR" not in usage, usage
    assert "/" not in usage, usage  # no absolute paths (of the interpreter or the repo) in usage lines


def test_cli_help_version_do_not_import_torch() -> None:
    cli = "from actstore.__main__ import main\ntry:\n    main({argv})\nexcept SystemExit:\n    pass\n"
    assert _modules_after(cli.format(argv=["--version"])) == set()
    assert _modules_after(cli.format(argv=["--help"])) == set()
    assert _modules_after(cli.format(argv=["info", "--help"])) == set()


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
    """Every ```bash line and ```python block of the README's walkthrough, in document order, in a scratch
    directory."""
    text = _walkthrough()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    blocks = [(m.group(1), m.group(2)) for m in re.finditer(r"```(bash|python)\n(.*?)```", text, flags=re.S)]
    bash = [line for lang, block in blocks if lang == "bash" for line in block.splitlines() if line.strip()]
    assert len(bash) >= 10
    for lang, block in blocks:
        if lang == "python":
            exec(compile(block, str(README), "exec"), {"__name__": "walkthrough"})
            continue
        for line in (ln for ln in block.splitlines() if ln.strip()):
            proc = subprocess.run(_command(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
            assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            if line.startswith("actstore info") and "--json" in line:
                assert json.loads(proc.stdout)["layers"] == [6, 10, 14]
            if line.startswith("actstore dashboard"):
                assert Path(proc.stdout.strip()).name == "index.html" and (tmp_path / proc.stdout.strip()).is_file()
    for fig in ("figures/decision_layer14.png", "figures/instruction_layer14.png"):
        assert (tmp_path / fig).stat().st_size > 10_000
    assert (tmp_path / "runs" / "demo.h5").is_file()
    assert (tmp_path / "runs" / "demo_l14.safetensors").stat().st_size > 0
    for fig in re.findall(r"\]\(((?:docs/figures|docs/img)/[^)]+)\)", text):
        assert (REPO / fig).stat().st_size > 10_000, f"README figure {fig} is missing"
