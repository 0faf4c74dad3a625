"""The capture CLI as a Python function: default-like run, resume, hdf5, --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from capture import SyntheticConfig, capture_run, make_batch
from capture._cli import store_path

actstore = pytest.importorskip("actstore")

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(batch_size=2, num_steps=2, layers=(6, 14), quiet=True)


def test_run_then_resume(tmp_path):
    path = capture_run(output_dir=str(tmp_path / "run.zarr"), max_batches=1, **SMALL)
    store = actstore.ActStore.open(str(path))
    assert store.num_samples == 2 and store.attrs["model"]["random_weights"] is True
    assert store.attrs["capture"]["layers"] == [6, 14]
    path2 = capture_run(output_dir=str(tmp_path / "run.zarr"), max_batches=2, resume=True, **SMALL)
    assert path2 == path
    store = actstore.ActStore.open(str(path))
    assert store.num_samples == 4 and sorted(store.steps) == [0, 1]
    assert sorted(set(store.rows("decision")["sample"].tolist())) == [0, 1, 2, 3]


def test_hdf5_backend_and_timestamped_dir(tmp_path):
    path = capture_run(output_dir=str(tmp_path), backend="hdf5", max_batches=1, roles=("decision",), **SMALL)
    assert path.parent == tmp_path and path.suffix == ".h5"
    assert store_path(str(tmp_path), "hdf5", auto_timestamp=True, resume=True) == str(path)
    store = actstore.ActStore.open(str(path))
    assert store.roles == ["decision"] and store[6, "decision"].shape == (2 * 2 * 10, 32)


def test_module_help_runs():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "capture", "--help"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0 and "--checkpoint-path" in out.stdout and "--batch-factory" in out.stdout


def two_batches(batch_size, seed):
    """A --batch-factory plug-in: two batches of synthetic observations with sample ids from 100."""
    for i in range(2):
        obs = make_batch(SyntheticConfig(batch_size=batch_size, seed=seed), i)
        obs.sample = obs.sample + 100
        yield obs


def test_batch_factory_plugin(tmp_path):
    path = capture_run(output_dir=str(tmp_path / "bf.zarr"), max_batches=5, roles=("instruction",),
                       batch_factory="test_capture_cli:two_batches", **SMALL)
    store = actstore.ActStore.open(str(path))
    assert store.num_samples == 4 and store.attrs["capture"]["source"] == "test_capture_cli:two_batches"
    assert sorted(set(store.rows("instruction")["sample"].tolist())) == [100, 101, 102, 103]
