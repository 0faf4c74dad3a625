"""Figures: written, non-empty PNGs; the numbers behind them match numpy on the same sampled rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_store

import actstore
from actstore.tools._plot import KINDS, collect, pca_2d, plot_store, sample_rows

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("role", ["decision", "instruction"])
def test_every_kind_writes_a_png(tmp_path: Path, kind: str, role: str) -> None:
    write_store(tmp_path / "run.zarr")
    out = plot_store(tmp_path / "run.zarr", 10, role, tmp_path / "fig" / f"{role}-{kind}.png", kind=kind, max_rows=50)
    data = out.read_bytes()
    assert data[:8] == PNG and len(data) > 5_000


def test_sample_is_deterministic_and_bounded() -> None:
    a, b = sample_rows(1000, 100, seed=3), sample_rows(1000, 100, seed=3)
    assert np.array_equal(a, b) and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0)
    assert np.array_equal(sample_rows(10, 100), np.arange(10))


def test_collected_numbers_match_numpy(tmp_path: Path) -> None:
    truth = write_store(tmp_path / "run.h5", dtype=torch.float32)
    with actstore.ActStore.open(tmp_path / "run.h5") as store:
        data = collect(store, 6, "decision", max_rows=64, seed=1)
    idx = sample_rows(len(truth.rows["decision"]["sample"]), 64, seed=1)
    ref = truth.acts[("decision", 6)].numpy()[idx]
    assert np.array_equal(data.acts, ref)
    assert np.allclose(data.norms_by_layer["10"], np.linalg.norm(truth.acts[("decision", 10)].numpy()[idx], axis=1))
    assert np.array_equal(data.color, truth.rows["decision"]["step"][idx]) and data.color_label == "denoising step"


def test_pca_recovers_the_dominant_direction() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8)).astype(np.float32) * 0.01
    x[:, 3] += rng.normal(size=500).astype(np.float32) * 10
    coords, ratio = pca_2d(x)
    assert ratio[0] > 0.99
    assert abs(np.corrcoef(coords[:, 0], x[:, 3])[0, 1]) > 0.999


def test_unknown_kind_and_colour(tmp_path: Path) -> None:
    write_store(tmp_path / "run.zarr")
    with pytest.raises(actstore.UnknownKeyError, match="kinds are"):
        plot_store(tmp_path / "run.zarr", 6, "decision", tmp_path / "x.png", kind="nope")
    with pytest.raises(actstore.UnknownKeyError, match="cannot colour by 'colour'"):
        plot_store(tmp_path / "run.zarr", 6, "decision", tmp_path / "x.png", color_by="colour")
    out = plot_store(tmp_path / "run.zarr", 6, "instruction", tmp_path / "ep.png", kind="pca", color_by="episode")
    assert out.stat().st_size > 0
