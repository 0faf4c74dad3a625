"""``python -m capture`` as a command: one-line errors and exit codes, the suffix rule, --overwrite, Ctrl-C and
--resume, object storage (a real S3 server: moto on loopback), --help / --version without torch."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import moto_s3

from capture import SyntheticConfig, make_batch
from capture._cli import PROG, main, resume_command

actstore = pytest.importorskip("actstore")

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--batch-size", "2", "--num-steps", "2", "--layers", "6", "--quiet"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "capture", *args], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=timeout)


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("capture: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- the command itself --------------------------------------------------------------------------------------------

def test_help_is_fast_and_clean() -> None:
    code = ("import sys\nfrom capture._cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH', "
            "'ZARR' if 'zarr' in sys.modules else 'NO-ZARR')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    usage = out.stdout.splitlines()[0]
    assert usage.startswith(f"usage: {PROG} ") and "/" not in usage  # no absolute path of __main__.py
    for text in ("--checkpoint-path", "--batch-factory", "--layer-path", "--overwrite", "--output-dir", "--resume"):
        assert text in out.stdout
    assert out.stdout.rstrip().endswith("NO-TORCH NO-ZARR")


def test_version() -> None:
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"capture (actstore) {actstore.__version__}"


@pytest.mark.parametrize(("args", "match"), [
    (["--num-steps", "0"], "--num-steps must be an integer >= 1, got 0"),
    (["--bogus", "3"], "Unrecognized options: --bogus"),
    (["--codec", "zip"], "invalid choice 'zip' for argument '--codec'"),
    (["--backend", "hdf5", "--output-dir", "y.zarr"], "--backend hdf5 conflicts with --output-dir 'y.zarr'"),
])
def test_bad_arguments_print_one_line_and_exit_2(args: list[str], match: str) -> None:
    out = cli(*args)
    assert out.returncode == 2 and match in one_error_line(out.stderr)
    assert not (ROOT / "y.zarr").exists()


def test_bad_layer_creates_nothing_then_a_rerun_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the store was created empty, and the corrected rerun was refused with Python keywords."""
    out = tmp_path / "run.zarr"
    assert main(["--output-dir", str(out), "--max-batches", "1", *SMALL, "--layers", "99"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--layers 99" in line and "layers are 0..17" in line and not out.exists()
    assert main(["--output-dir", str(out), "--max-batches", "1", *SMALL, "--roles", "nope"]) == 2
    assert "no role 'nope'" in one_error_line(capsys.readouterr().err) and not out.exists()
    assert main(["--output-dir", str(out), "--max-batches", "1", *SMALL]) == 0
    assert actstore.ActStore.open(str(out)).num_samples == 2
    # an existing store: the message names the CLI's flags; --overwrite replaces it
    assert main(["--output-dir", str(out), "--max-batches", "2", *SMALL]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "already exists: pass --resume to continue it or --overwrite to replace it" in line
    assert main(["--output-dir", str(out), "--max-batches", "2", *SMALL, "--overwrite", "--roles", "decision"]) == 0
    store = actstore.ActStore.open(str(out))
    assert store.num_samples == 4 and store.roles == ["decision"]


def test_overwrite_leaves_a_non_store_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keep = tmp_path / "notes.zarr"
    keep.mkdir()
    (keep / "mine.txt").write_text("precious")
    assert main(["--output-dir", str(keep), "--max-batches", "1", *SMALL, "--overwrite"]) == 2
    assert "is not an actstore store" in one_error_line(capsys.readouterr().err)
    assert (keep / "mine.txt").read_text() == "precious"


@pytest.mark.parametrize(("name", "backend", "is_file"), [("x.h5", "hdf5", True), ("x.zarr", "zarr", False)])
def test_the_suffix_decides_the_backend(tmp_path: Path, name: str, backend: str, is_file: bool) -> None:
    """Before: ``--output-dir x.h5`` wrote a Zarr directory named x.h5, then the summary failed (NotAStoreError)."""
    out = tmp_path / name
    assert main(["--output-dir", str(out), "--max-batches", "1", *SMALL, "--roles", "decision"]) == 0
    assert out.is_file() == is_file
    with actstore.ActStore.open(str(out)) as store:
        assert store.num_samples == 2 and store.meta is not None
    assert (tmp_path / "x.h5").suffix != ".zarr" or backend == "zarr"


def test_direct_io_writes_the_same_store(tmp_path: Path) -> None:
    """``--direct-io`` (chunk files past the page cache) stores what a plain run stores."""
    runs = {}
    for flag in ((), ("--direct-io",)):
        out = tmp_path / f"x{len(flag)}.zarr"
        assert main(["--output-dir", str(out), "--max-batches", "2", *SMALL, "--roles", "decision", *flag]) == 0
        with actstore.ActStore.open(str(out)) as store:
            runs[flag] = {layer: store[layer, "decision"][:].float().numpy() for layer in store.layers}
    plain, direct = runs.values()
    assert plain.keys() == direct.keys() and all(np.array_equal(plain[k], direct[k]) for k in plain)


# -- Ctrl-C and resume ----------------------------------------------------------------------------------------------

INTERRUPT_AT: list[int | None] = [None]
"""Batch index at which ``interrupting_batches`` raises KeyboardInterrupt (None: never)."""


def interrupting_batches(batch_size: int, seed: int) -> Iterator:
    """A --batch-factory that presses Ctrl-C before batch INTERRUPT_AT[0]."""
    i = 0
    while True:
        if INTERRUPT_AT[0] == i:
            raise KeyboardInterrupt
        yield make_batch(SyntheticConfig(batch_size=batch_size, seed=seed), i)
        i += 1


def test_ctrl_c_says_what_was_committed_and_how_to_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    args = ["--output-dir", str(runs), "--max-batches", "3", *SMALL, "--batch-factory",
            "test_capture_cli:interrupting_batches"]
    INTERRUPT_AT[0] = 1
    try:
        assert main(args) == 130
    finally:
        INTERRUPT_AT[0] = None
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    (path,) = runs.glob("*.zarr")
    assert f"interrupted: 1 of 3 batches committed to {path}" in err
    command = err.split("continue with: ", 1)[1]
    assert command.startswith(PROG + " ") and command.endswith(f"--output-dir {path} --resume")
    assert actstore.ActStore.open(str(path)).num_samples == 2
    assert main(shlex.split(command)[len(shlex.split(PROG)):]) == 0
    store = actstore.ActStore.open(str(path))
    assert store.num_samples == 6 and sorted(store.samples()["sample"].tolist()) == list(range(6))


def test_resume_command_rewrites_output_and_drops_overwrite() -> None:
    got = resume_command(["--output-dir=runs", "--overwrite", "--layers", "6", "--no-resume"], "runs/a b.zarr")
    assert got == f"{PROG} --layers 6 --output-dir 'runs/a b.zarr' --resume"


def broken_factory(checkpoint_path, seed):
    raise RuntimeError("factory exploded")


def test_failures_exit_1_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["--output-dir", str(tmp_path / "f.zarr"), *SMALL, "--model-factory", "test_capture_cli:broken_factory"]
    assert main(args) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "RuntimeError: factory exploded" in line and "CAPTURE_TRACEBACK=1" in line
    monkeypatch.setenv("CAPTURE_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="factory exploded"):
        main(args)


# -- object storage -------------------------------------------------------------------------------------------------

@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    with moto_s3(monkeypatch, endpoint_env=True) as endpoint:
        yield {"endpoint_url": endpoint}


def test_s3_output_dir(s3_env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    """The README's command: before, it wrote a local folder ./s3:/acts/run.zarr and exited 0."""
    monkeypatch.chdir(tmp_path)
    url = "s3://acts/run.zarr"
    assert main(["--output-dir", url, "--max-batches", "1", *SMALL[:-1]]) == 0  # with the summary, read from S3
    assert "samples  2" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # nothing local
    assert main(["--output-dir", url, "--max-batches", "2", *SMALL, "--resume"]) == 0
    store = actstore.ActStore.open(url, storage_options=s3_env)
    assert store.num_samples == 4 and store.attrs["capture"]["layers"] == [6]
    # a directory URL: timestamped stores inside it, and --resume finds the newest
    assert main(["--output-dir", "s3://acts/runs", "--max-batches", "1", *SMALL]) == 0
    assert main(["--output-dir", "s3://acts/runs", "--max-batches", "2", *SMALL, "--resume"]) == 0
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env["endpoint_url"]})
    (run,) = fs.ls("acts/runs")
    assert actstore.ActStore.open(f"s3://{run}", storage_options=s3_env).num_samples == 4
    assert not list(tmp_path.iterdir())
