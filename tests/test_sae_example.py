"""The SAE example: trains from a store, loads pre-trained weights, resumes exactly; the loader bench smoke run.

The sparse forward (top-k codes, decode by index) is checked against a float64 numpy reference of the dense
formula and against the dense torch formulation's outputs and gradients.
"""

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
from actstore.train._sae import TopKCodes, TopKSAE

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


# ---------------------------------------------------------------------------------- sparse vs dense forward
def _random_sae(d: int, m: int, k: int, *, bias_shift: float = 0.0, seed: int = 0) -> TopKSAE:
    sae = TopKSAE(d, m, k, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-zero biases, so that b_dec's two paths (input centring and output) both matter
        sae.W_enc.copy_(torch.randn(d, m, generator=g) / d**0.5)
        sae.b_enc.copy_(0.1 * torch.randn(m, generator=g) + bias_shift)
        sae.b_dec.copy_(0.5 * torch.randn(d, generator=g))
    return sae


def _numpy_reference(sae: TopKSAE, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x_hat and dense codes of ``TopK(relu((x - b_dec) W_enc + b_enc)) W_dec + b_dec`` in float64 numpy."""
    w = {n: p.detach().double().numpy() for n, p in sae.named_parameters()}
    pre = np.maximum((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0.0)
    top = np.argpartition(-pre, sae.k - 1, axis=1)[:, : sae.k]
    z = np.zeros_like(pre)
    np.put_along_axis(z, top, np.take_along_axis(pre, top, axis=1), axis=1)
    return z @ w["W_dec"] + w["b_dec"], z


@pytest.mark.parametrize("bias_shift", [0.0, -3.0])  # -3: most rows have fewer than k positive latents
def test_sparse_forward_matches_numpy_dense_reference(bias_shift: float) -> None:
    d, m, k = 24, 96, 6
    sae = _random_sae(d, m, k, bias_shift=bias_shift).double()
    x = torch.randn(50, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xhat, codes = sae(x)
    ref_xhat, ref_z = _numpy_reference(sae, x.numpy())
    np.testing.assert_allclose(xhat.detach().numpy(), ref_xhat, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(codes.dense(m).detach().numpy(), ref_z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), ref_z, rtol=1e-12, atol=1e-12)
    assert codes.values_BK.shape == codes.indices_BK.shape == (50, k) and bool((codes.values_BK >= 0).all())
    if bias_shift:
        assert int((ref_z > 0).sum(1).min()) < k  # the case where top-k picks some zero (negative) latents


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_sparse_gradients_match_dense(dtype: torch.dtype, tol: float) -> None:
    d, m, k = 32, 128, 8
    x = torch.randn(64, d, generator=torch.Generator().manual_seed(5), dtype=dtype)
    grads = []
    for forward in ("forward", "forward_dense"):
        sae = _random_sae(d, m, k).to(dtype)
        xhat, _ = getattr(sae, forward)(x)
        loss = (xhat - x).pow(2).mean() + xhat.abs().sum() * 1e-3
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()})
        if forward == "forward":
            sparse_out = xhat.detach()
        else:
            torch.testing.assert_close(sparse_out, xhat.detach(), rtol=tol, atol=tol)
    for name, g in grads[0].items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(g, grads[1][name], rtol=tol, atol=tol * float(g.abs().max()), msg=name)


def test_sparse_forward_batch_dims_and_codes() -> None:
    sae = _random_sae(8, 40, 4)
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(7))
    xhat, codes = sae(x)
    flat, flat_codes = sae(x.reshape(15, 8))
    assert xhat.shape == (3, 5, 8) and codes.indices_BK.shape == (3, 5, 4)
    torch.testing.assert_close(xhat.reshape(15, 8), flat)
    torch.testing.assert_close(codes.dense(40).reshape(15, 40), flat_codes.dense(40))
    z = TopKCodes(torch.tensor([[2.0, 0.5]]), torch.tensor([[3, 0]])).dense(5)
    assert z.tolist() == [[0.5, 0.0, 0.0, 2.0, 0.0]]
