"""The SAE example: trains from a store, loads pre-trained weights, resumes exactly; the loader bench smoke run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import actstore
from actstore._sae import TopKSAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # two training runs compared bit for bit

ROOT = Path(__file__).resolve().parents[1]


def _example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("train_sae", ROOT / "examples" / "train_sae.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["train_sae"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sae") / "s.zarr"
    n, d = 640, 16
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(n, 4, generator=g) @ torch.randn(4, d, generator=g)).to(torch.bfloat16)
    r = np.arange(n)
    with actstore.create(path, chunk_rows=64, block_rows=16) as w:
        w.append("decision", rows={"sample": r // 10, "step": r % 2, "position": r % 10}, acts={14: x})
    return path


def test_resume_gives_identical_weights(store_path: Path, tmp_path: Path) -> None:
    ex = _example()
    base = {"store": str(store_path), "batch_size": 64, "k": 4, "expansion": 2, "lr": 1e-2, "log_every": 3}
    straight = ex.train(ex.TrainConfig(steps=14, **base))  # crosses an epoch boundary (10 batches per epoch)
    ck = str(tmp_path / "ck")
    ex.train(ex.TrainConfig(steps=7, checkpoint_dir=ck, checkpoint_every=100, **base))
    resumed = ex.train(ex.TrainConfig(steps=14, checkpoint_dir=ck, resume=True, **base))
    assert resumed["step"] == 14
    for (name, a), b in zip(straight["sae"].state_dict().items(), resumed["sae"].state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert 0.0 < straight["explained_variance"] <= 1.0 and straight["mse"] > 0


def test_dataloader_workers_resume(store_path: Path, tmp_path: Path) -> None:
    ex = _example()
    base = {"store": str(store_path), "batch_size": 64, "k": 4, "expansion": 2, "lr": 1e-2, "workers": 2}
    straight = ex.train(ex.TrainConfig(steps=6, **base))
    ck = str(tmp_path / "ck")
    ex.train(ex.TrainConfig(steps=3, checkpoint_dir=ck, **base))
    resumed = ex.train(ex.TrainConfig(steps=6, checkpoint_dir=ck, resume=True, **base))
    for a, b in zip(straight["sae"].state_dict().values(), resumed["sae"].state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_init_from_pretrained(store_path: Path, tmp_path: Path, fmt: str) -> None:
    d, m = 16, 48
    rng = np.random.default_rng(0)
    w = {"W_enc": rng.standard_normal((d, m)), "W_dec": rng.standard_normal((m, d)), "b_enc": rng.standard_normal(m),
         "b_dec": rng.standard_normal(d), "threshold": np.abs(rng.standard_normal(m))}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    path = tmp_path / f"sae.{fmt}"
    if fmt == "npz":
        np.savez(path, **w)
    else:
        save_file({k: torch.from_numpy(v) for k, v in w.items()}, str(path))
    sae = TopKSAE.from_pretrained(path, k=8)
    assert torch.equal(sae.W_enc, torch.from_numpy(w["W_enc"])) and torch.equal(sae.threshold, torch.from_numpy(w["threshold"]))
    ex = _example()
    out = ex.train(ex.TrainConfig(store=str(store_path), steps=2, batch_size=64, k=8, init=str(path)))
    assert out["sae"].W_enc.shape == (d, m)
    bad = tmp_path / "bad.npz"
    np.savez(bad, W_enc=w["W_enc"])
    with pytest.raises(actstore.UnknownKeyError, match="W_dec"):
        TopKSAE.from_pretrained(bad, k=8)


def test_cli_and_bench_smoke(store_path: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    cli = subprocess.run([sys.executable, str(ROOT / "examples" / "train_sae.py"), "--store", str(store_path),
                          "--layer", "14", "--steps", "3", "--batch-size", "64", "--k", "4", "--expansion", "2"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "explained variance" in cli.stdout
    out = tmp_path / "r.json"
    bench = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_loader.py"), "--smoke", "--data",
                            str(tmp_path / "data"), "--out", str(out), "--device", "cuda"],
                           capture_output=True, text=True, env=env, timeout=180)
    assert bench.returncode == 0, bench.stderr
    assert "actstore loader" in bench.stdout and out.exists()
