"""The capture run's configs: validation without I/O, the suffix rule, flat <-> nested, one-line field docs."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import actstore
from capture import CaptureConfigError, ModelSpecError
from capture._cli_config import (
    CODEC_NAMES,
    MODEL_NAMES,
    CaptureConfig,
    InputConfig,
    ModelConfig,
    OutputConfig,
    RunConfig,
    flag,
    is_url,
    store_suffix,
)

ROOT = Path(__file__).resolve().parents[1]


def test_choices_agree_with_their_homes() -> None:
    from capture import MODELS

    assert set(CODEC_NAMES) == set(actstore.CODECS)
    assert set(MODEL_NAMES) == {*MODELS, "hf"}


@pytest.mark.parametrize(("output_dir", "backend", "want"), [
    ("x.h5", None, "hdf5"), ("x.hdf5", None, "hdf5"), ("runs/y.zarr", None, "zarr"), ("runs/y.zarr/", None, "zarr"),
    ("runs", None, "zarr"), ("runs", "hdf5", "hdf5"), ("x.h5", "hdf5", "hdf5"), ("s3://b/run.zarr", None, "zarr"),
    ("s3://b/runs", None, "zarr"),
])
def test_the_suffix_decides_the_backend(output_dir: str, backend: str | None, want: str) -> None:
    assert OutputConfig(output_dir=output_dir, backend=backend).store_backend == want  # type: ignore[arg-type]


@pytest.mark.parametrize(("output_dir", "backend", "fix"), [
    ("y.zarr", "hdf5", "'y.h5'"), ("runs/x.h5", "zarr", "'runs/x.zarr'")])
def test_a_conflicting_backend_is_refused(output_dir: str, backend: str, fix: str) -> None:
    with pytest.raises(CaptureConfigError, match=f"--backend {backend} conflicts with --output-dir.*{fix}"):
        OutputConfig(output_dir=output_dir, backend=backend)  # type: ignore[arg-type]


def test_store_suffix_and_urls() -> None:
    assert store_suffix("s3://bucket/run.zarr") == ".zarr" and store_suffix(".zarr") is None
    assert store_suffix("runs") is None and store_suffix("RUN.H5") == ".h5"
    assert is_url("s3://b/x") and not is_url("file:///tmp/x") and not is_url("/tmp/x")
    with pytest.raises(CaptureConfigError, match="HDF5 stores are local files"):
        OutputConfig(output_dir="s3://b/x.h5")


@given(st.text(alphabet="abc/._", max_size=12), st.sampled_from(["", ".zarr", ".h5", ".hdf5"]))
def test_store_suffix_is_the_last_component_suffix(stem: str, suffix: str) -> None:
    path = f"d/{stem}{suffix}"
    got = store_suffix(path)
    tail = path.rstrip("/").rsplit("/", 1)[-1]
    assert got is None or (tail.lower().endswith(got) and len(tail) > len(got))


@pytest.mark.parametrize(("make", "match"), [
    (lambda: InputConfig(batch_size=0), "--batch-size must be an integer >= 1, got 0"),
    (lambda: InputConfig(max_batches=-1), "--max-batches must be"),
    (lambda: InputConfig(batch_factory="nocolon"), "--batch-factory 'nocolon': expected module:function"),
    (lambda: CaptureConfig(num_steps=0), "--num-steps must be"),
    (lambda: CaptureConfig(layers=(6, 6)), "--layers lists a value twice"),
    (lambda: CaptureConfig(layers=(-1,)), "--layers must be layer indices >= 0"),
    (lambda: CaptureConfig(roles=()), "need at least one value"),
    (lambda: OutputConfig(resume=True, overwrite=True), "--resume and --overwrite exclude each other"),
    (lambda: OutputConfig(part="2/2"), "--part '2/2': expected i/N"),
    (lambda: ModelConfig(model="hf"), "--model hf needs --checkpoint-path"),
    (lambda: ModelConfig(model="factory"), "--model factory needs --model-factory"),
    (lambda: ModelConfig(model="lerobot", model_factory="m:f"), "conflicts with --model lerobot"),
    (lambda: ModelConfig(layer_path="transformer.h"), r"--layer-path 'transformer.h' must contain \{i\}"),
    (lambda: RunConfig(output=OutputConfig(output_dir="x.h5", part="0/2")), "--part 0/2 needs a zarr store"),
    (lambda: RunConfig.from_flat(num_step=3), "unknown capture option 'num_step'; options are"),
])
def test_bad_values_are_refused_naming_the_flag(make, match: str) -> None:
    with pytest.raises(CaptureConfigError, match=match) as info:
        make()
    assert isinstance(info.value, ValueError) and isinstance(info.value, actstore.ActStoreError)
    assert not isinstance(info.value, ModelSpecError)


def test_flat_round_trip() -> None:
    cfg = RunConfig.from_flat(layers=[6], roles=("full",), num_steps=3, output_dir="x.zarr", seed=4, quiet=True,
                              model_factory="m:f", batch_size=2)
    assert cfg.capture.layers == (6,) and cfg.output.output_dir == "x.zarr" and cfg.model.name == "factory"
    assert RunConfig.from_flat(**cfg.flat()) == cfg
    assert flag("num_steps") == "--num-steps"


def test_field_docstrings_are_one_line() -> None:
    """tyro keeps a docstring's line breaks in --help: a wrapped field docstring prints broken lines."""
    tree = ast.parse((ROOT / "capture" / "_cli_config.py").read_text())
    fields = 0
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        body = cls.body
        for prev, node in zip(body, body[1:], strict=False):
            if isinstance(prev, ast.AnnAssign) and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                fields += 1
                assert "\n" not in node.value.value, (cls.name, node.value.value)
    documented = sum(len([f for f in dataclasses.fields(c) if not dataclasses.is_dataclass(f.default_factory)])
                     for c in (ModelConfig, InputConfig, CaptureConfig, OutputConfig))
    assert fields >= documented
