"""A capture run as a Python function: default-like run, resume (and its refusals), hdf5, plug-ins, store paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capture import CaptureConfigError, RunConfig, SiteError, SyntheticConfig, capture_run, make_batch
from capture._run import RESUMABLE, options_of, store_path

actstore = pytest.importorskip("actstore")

SMALL = dict(batch_size=2, num_steps=2, layers=(6, 14), quiet=True)


def test_run_then_resume(tmp_path: Path) -> None:
    path = capture_run(output_dir=str(tmp_path / "run.zarr"), max_batches=1, **SMALL)
    store = actstore.ActStore.open(str(path))
    assert store.num_samples == 2 and store.attrs["model"]["random_weights"] is True
    assert store.attrs["capture"]["layers"] == [6, 14]
    assert store.attrs["capture"]["options"]["num_steps"] == 2  # recorded for resume checks
    path2 = capture_run(output_dir=str(tmp_path / "run.zarr"), max_batches=2, resume=True, **SMALL)
    assert path2 == path
    store = actstore.ActStore.open(str(path))
    assert store.num_samples == 4 and sorted(store.steps) == [0, 1]
    assert sorted(set(store.rows("decision")["sample"].tolist())) == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def one_batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return capture_run(output_dir=str(tmp_path_factory.mktemp("resume") / "run.zarr"), max_batches=1, **SMALL)


@pytest.mark.parametrize(("change", "flags"), [
    ({"num_steps": 3}, ["--num-steps 3 (recorded: 2)"]),
    ({"batch_size": 3, "seed": 1}, ["--batch-size 3 (recorded: 2)", "--seed 1 (recorded: 0)"]),
    ({"layers": (6,)}, ["--layers 6 (recorded: 6 14)"]),
    ({"model": "transformers-pi0"}, ["--model transformers-pi0 (recorded: reference)"]),
])
def test_resume_refuses_a_changed_config(one_batch: Path, change: dict, flags: list[str]) -> None:
    """Before: a resumed run mixed 2-step and 3-step samples and overwrote the recorded config for all rows."""
    path = one_batch
    before = actstore.ActStore.open(str(path))
    attrs, commit = json.dumps(before.attrs, sort_keys=True), before.commit
    with pytest.raises(CaptureConfigError, match="--resume: .* was captured with other options") as info:
        capture_run(output_dir=str(path), max_batches=2, resume=True, **{**SMALL, **change})
    for text in flags:
        assert text in str(info.value)
    after = actstore.ActStore.open(str(path))
    assert json.dumps(after.attrs, sort_keys=True) == attrs and after.commit == commit and after.num_samples == 2


def test_options_that_may_change_on_resume() -> None:
    a = RunConfig.from_flat(max_batches=2, device="cpu", codec="zstd", quiet=True, progress_interval=3.0)
    assert options_of(a) == options_of(RunConfig())
    assert {"num_steps", "batch_size", "seed", "layers", "roles", "model", "checkpoint_path"} <= set(options_of(a))
    assert not RESUMABLE & set(options_of(a))


def test_resume_of_a_store_without_recorded_options(tmp_path: Path) -> None:
    """Stores written before options were recorded are checked against their attrs' model and capture fields."""
    from capture._run import check_resume

    attrs = {"model": {"name": "reference", "checkpoint_path": None, "seed": 0, "dtype": "float32"},
             "capture": {"layers": [6, 14], "roles": ["decision", "instruction"], "num_steps": 10, "batch_size": 2,
                         "source": "synthetic"}}
    check_resume(RunConfig.from_flat(layers=(6, 14), batch_size=2), attrs, "old.zarr")
    with pytest.raises(CaptureConfigError, match="--num-steps 2 \\(recorded: 10\\)"):
        check_resume(RunConfig.from_flat(layers=(6, 14), batch_size=2, num_steps=2), attrs, "old.zarr")


def test_bad_layer_or_role_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bad.zarr"
    with pytest.raises(SiteError, match=r"--layers 99: .* layers are 0\.\.17"):
        capture_run(output_dir=str(out), max_batches=1, **{**SMALL, "layers": (99,)})
    with pytest.raises(SiteError, match="no role 'nope'.*roles are"):
        capture_run(output_dir=str(out), max_batches=1, **{**SMALL, "roles": ("nope",)})
    assert not out.exists()


def test_hdf5_backend_and_timestamped_dir(tmp_path: Path) -> None:
    path = capture_run(output_dir=str(tmp_path), backend="hdf5", max_batches=1, roles=("decision",), **SMALL)
    assert path.parent == tmp_path and path.suffix == ".h5" and path.is_file()
    assert store_path(str(tmp_path), "hdf5", auto_timestamp=True, resume=True) == str(path)
    store = actstore.ActStore.open(str(path))
    assert store.roles == ["decision"] and store[6, "decision"].shape == (2 * 2 * 10, 32)


def test_store_path_keeps_urls_whole(tmp_path: Path) -> None:
    """Before: ``Path("s3://bucket/run.zarr")`` collapsed ``//`` into a local folder ``s3:/bucket/run.zarr``."""
    assert store_path("s3://bucket/run.zarr", "zarr", True, False) == "s3://bucket/run.zarr"
    assert store_path("s3://bucket/runs/", "zarr", False, False) == "s3://bucket/runs/capture.zarr"
    assert store_path(str(tmp_path), "zarr", False, False) == f"{tmp_path}/capture.zarr"
    with pytest.raises(CaptureConfigError, match="--resume: no \\*.h5 store in"):
        store_path(str(tmp_path), "hdf5", True, True)


def two_batches(batch_size, seed):
    """A --batch-factory plug-in: two batches of synthetic observations with sample ids from 100."""
    for i in range(2):
        obs = make_batch(SyntheticConfig(batch_size=batch_size, seed=seed), i)
        obs.sample = obs.sample + 100
        yield obs


def test_batch_factory_plugin(tmp_path: Path) -> None:
    path = capture_run(output_dir=str(tmp_path / "bf.zarr"), max_batches=5, roles=("instruction",),
                       batch_factory="test_capture_run:two_batches", **SMALL)
    store = actstore.ActStore.open(str(path))
    assert store.num_samples == 4 and store.attrs["capture"]["source"] == "test_capture_run:two_batches"
    assert sorted(set(store.rows("instruction")["sample"].tolist())) == [100, 101, 102, 103]


def test_config_object_or_keywords() -> None:
    with pytest.raises(CaptureConfigError, match="not both"):
        capture_run(RunConfig(), num_steps=2)
