"""The feature pass and its queries against a brute-force numpy reference over every row.

A store written with the public API (``conftest.write_store``), a random TopK SAE and a random JumpReLU SAE (Gemma
Scope's tensor names): every statistic of the derived group equals what encoding all rows at once and counting
with numpy gives; ``.top`` / ``.density`` / ``.codes`` / ``.fired`` answer from it; a killed pass resumes to the very
same arrays; the store's own files are untouched; a tampered group is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_store
from safetensors.torch import save_file

import actstore
from actstore.tools._features import FEATURES_FORMAT_VERSION, derived_root, feature_names
from actstore.tools._features_pass import FeaturePassConfig, feature_pass, load_sae

D, M, K = 32, 64, 4


def _sae_file(path: Path, kind: str, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(M, D, generator=g) / D**0.5
    t = {"W_enc": w.t().contiguous(), "W_dec": w.contiguous(), "b_enc": torch.randn(M, generator=g) * 0.1,
         "b_dec": torch.randn(D, generator=g) * 0.1}
    if kind == "jumprelu":
        t["threshold"] = torch.rand(M, generator=g) * 0.5 + 0.05
    save_file(t, str(path))
    return path


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "derived" not in p.parts}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("features")
    truth = write_store(tmp / "run.zarr", n_samples=24, steps=4, horizon=5, d=D, layers=(6,), dtype=torch.float32)
    return {"tmp": tmp, "truth": truth, "topk": _sae_file(tmp / "topk.safetensors", "topk"),
            "jump": _sae_file(tmp / "jump.safetensors", "jumprelu", seed=1)}


def _reference(x: torch.Tensor, sae_path: Path, kind: str) -> np.ndarray:
    sae = load_sae(sae_path, kind=kind, k=K)
    t = {n: getattr(sae, n) for n in ("W_enc", "b_enc", "b_dec")}
    if kind == "jumprelu":
        pre = x.double() @ t["W_enc"].double() + t["b_enc"].double()
        z = pre * (pre > sae.threshold.double())
    else:
        pre = torch.relu((x.double() - t["b_dec"].double()) @ t["W_enc"].double() + t["b_enc"].double())
        v, i = pre.topk(K, dim=-1)
        z = torch.zeros_like(pre).scatter_(-1, i, v)
    return z.numpy()


@pytest.mark.parametrize("kind", ["topk", "jumprelu"])
def test_pass_matches_numpy_reference(world: dict, kind: str) -> None:
    path = world["truth"].path
    before = _files(path)
    sae = world["topk" if kind == "topk" else "jump"]
    name = f"f_{kind}"
    with actstore.ActStore.open(path) as store:
        out = feature_pass(store, sae, FeaturePassConfig(layer=6, role="decision", name=name, top_k=8,
                                                         batch_rows=64, checkpoint_every=1),
                           sae_kind="auto", k=K, progress=False)
        assert out == derived_root(path) / name
        assert _files(path) == before  # the captured arrays and the root record are untouched
        fs = store.features(name)
        x = world["truth"].acts[("decision", 6)].float()
        rows = world["truth"].rows["decision"]
        z_ref = _reference(x, sae, kind)
        z_got = fs.codes(np.arange(len(x))).numpy()
        np.testing.assert_allclose(z_got, z_ref, rtol=1e-4, atol=1e-5)
        fire = z_got > 0
        np.testing.assert_array_equal(fs.array("count"), fire.sum(0))
        np.testing.assert_allclose(fs.array("sum"), z_got.astype(np.float64).sum(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(fs.array("max"), z_got.max(0), rtol=1e-5)
        np.testing.assert_allclose(fs.density(), fire.mean(0))
        assert fs.steps == [0, 1, 2, 3]
        by_step = np.stack([fire[rows["step"] == s].mean(0) for s in range(4)])
        np.testing.assert_allclose(fs.density(by="step"), by_step)
        mean_step = np.stack([z_got[rows["step"] == s].mean(0) for s in range(4)])
        np.testing.assert_allclose(fs.mean_by_step(), mean_step, rtol=1e-5, atol=1e-6)
        ep = world["truth"].samples["episode"][rows["sample"]]
        assert fs.groups("episode") == sorted(set(ep.tolist()))
        by_ep = np.stack([fire[ep == e].mean(0) for e in fs.groups("episode")])
        np.testing.assert_allclose(fs.density(by="episode"), by_ep)
        with pytest.raises(actstore.UnknownKeyError, match="task"):
            fs.density(by="task")  # the test store has no task column
        lo, hi, bins = -3.0, 3.0, 48
        for f in range(M):
            v = z_got[:, f][fire[:, f]]
            want_hist = np.bincount(np.clip(np.floor((np.log10(v) - lo) * bins / (hi - lo)), 0, bins - 1).astype(int),
                                    minlength=bins)
            counts, edges = fs.histogram(f)
            np.testing.assert_array_equal(counts, want_hist)
            assert len(edges) == bins + 1
            top = fs.top(f, 5)
            order = np.argsort(-z_got[:, f], kind="stable")[: min(5, int(fire[:, f].sum()))]
            np.testing.assert_allclose(top.activation, z_got[order, f], rtol=1e-5)
            np.testing.assert_array_equal(top.row, order)  # best first, the earlier row on a tie
            np.testing.assert_array_equal(top.sample, rows["sample"][top.row])
            np.testing.assert_array_equal(top.step, rows["step"][top.row])
            assert top.prompt == [world["truth"].samples["prompt"][s] for s in top.sample]
            assert top.token == [f"action t={p}" for p in rows["position"][top.row]]
        # which features fire for one sample and step
        sel = (rows["sample"] == 3) & (rows["step"] == 2)
        fired = fs.fired(sample=3, step=2)
        want = {int(f) for f in np.nonzero(fire[sel].any(0))[0]}
        assert set(fired) == want
        vals = list(fired.values())
        assert vals == sorted(vals, reverse=True)
        assert name in feature_names(path)


def test_instruction_role_and_hdf5_sidecar(tmp_path: Path, world: dict) -> None:
    truth = write_store(tmp_path / "run.h5", n_samples=10, steps=2, d=D, layers=(6,), dtype=torch.float32)
    before = hashlib.sha256((tmp_path / "run.h5").read_bytes()).hexdigest()
    with actstore.ActStore.open(truth.path) as store:
        out = feature_pass(store, world["topk"], FeaturePassConfig(layer=6, role="instruction", name="ins"), k=K,
                           progress=False)
        assert out == tmp_path / "run.h5.derived" / "ins"
        fs = store.features("ins")
        assert fs.steps == [actstore.NO_STEP]
        f = int(np.argmax(fs.array("count")))
        top = fs.top(f, 3)
        rows = truth.rows["instruction"]
        np.testing.assert_array_equal(top.position, rows["position"][top.row])
        assert all(t.startswith("token ") or t.startswith("id ") for t in top.token)
    assert hashlib.sha256((tmp_path / "run.h5").read_bytes()).hexdigest() == before


def test_resume_after_kill_gives_identical_arrays(world: dict) -> None:
    path = world["truth"].path
    cfg = FeaturePassConfig(layer=6, name="resumed", batch_rows=64, checkpoint_every=1)
    with actstore.ActStore.open(path) as store:
        partial = feature_pass(store, world["topk"], cfg, k=K, progress=False, stop_after=3)
        assert partial.name == "resumed.partial" and (partial / "state.json").is_file()
        with pytest.raises(actstore.UnknownKeyError, match="resumed"):
            store.features("resumed")  # no group until the pass completes
        assert json.loads((partial / "state.json").read_text())["next_row"] == 3 * 64
        feature_pass(store, world["topk"], cfg, k=K, progress=False)
        assert not partial.exists()
        whole = feature_pass(store, world["topk"], FeaturePassConfig(layer=6, name="whole", batch_rows=64), k=K,
                             progress=False)
        a, b = store.features("resumed"), store.features(whole.name)
        for key in a.record["arrays"]:
            np.testing.assert_array_equal(a.array(key), b.array(key), err_msg=key)


def test_refusals(world: dict, tmp_path: Path) -> None:
    path = world["truth"].path
    with actstore.ActStore.open(path) as store:
        cfg = FeaturePassConfig(layer=6, name="twice")
        feature_pass(store, world["topk"], cfg, k=K, progress=False)
        with pytest.raises(actstore.StoreExistsError, match="overwrite"):
            feature_pass(store, world["topk"], cfg, k=K, progress=False)
        feature_pass(store, world["topk"], cfg, k=K, progress=False, overwrite=True)
        with pytest.raises(actstore.ConfigError, match="k"):
            feature_pass(store, world["topk"], FeaturePassConfig(layer=6, name="nok"), progress=False)
        with pytest.raises(actstore.InvalidNameError):
            FeaturePassConfig(layer=6, name="../x")
        bad = tmp_path / "bad.safetensors"
        save_file({"W_enc": torch.zeros(D + 1, M), "W_dec": torch.zeros(M, D + 1), "b_enc": torch.zeros(M),
                   "b_dec": torch.zeros(D + 1)}, str(bad))
        with pytest.raises(actstore.SchemaMismatchError, match="width"):
            feature_pass(store, bad, FeaturePassConfig(layer=6, name="wide"), k=K, progress=False)
        with pytest.raises(actstore.UnknownKeyError, match="groups are"):
            store.features("nope")
        rec = derived_root(path) / "twice" / "features.json"
        record = json.loads(rec.read_text())
        assert record["format_version"] == FEATURES_FORMAT_VERSION
        record["n_rows"] += 1
        rec.write_text(json.dumps(record))
        with pytest.raises(actstore.CorruptStoreError, match="checksum"):
            store.features("twice")
        arr = derived_root(path) / "twice" / "count.npy"
        feature_pass(store, world["topk"], cfg, k=K, progress=False, overwrite=True)
        arr.write_bytes(arr.read_bytes()[:-8] + b"\x01" * 8)
        with pytest.raises(actstore.CorruptStoreError, match="SHA-256"):
            store.features("twice")
    with pytest.raises(actstore.InvalidNameError, match="URL"):
        derived_root("s3://bucket/run.zarr")


@pytest.mark.parametrize("kind", ["topk", "jumprelu", "jumprelu_negative_threshold"])
def test_encode_sparse_matches_dense_formula(world: dict, kind: str) -> None:
    """The chunked sparse encoder against the plain float32 dense formula (the whole batch in one matmul), for
    float32 and bf16 rows and chunks that do not divide the batch."""
    path = world["topk"] if kind == "topk" else world["jump"]
    sae = load_sae(path, kind=kind.split("_")[0], k=K)
    if kind == "jumprelu_negative_threshold":  # codes below zero: non-zero, so listed (summed, never counted)
        sae.threshold -= 0.6
    x = world["truth"].acts[("decision", 6)]
    for rows in (x, x.bfloat16()):
        xf = rows.float()
        if sae.kind == "jumprelu":
            pre = xf @ sae.W_enc + sae.b_enc
            dense = pre * (pre > sae.threshold)
        else:
            pre = torch.relu((xf - sae.b_dec) @ sae.W_enc + sae.b_enc)
            v, i = pre.topk(K, dim=-1)
            dense = torch.zeros_like(pre).scatter_(-1, i, v)
        want_row, want_feat = np.nonzero(dense.numpy())
        for chunk in (None, 7, 1000):
            row, feat, val = (t.numpy() for t in sae.encode_sparse(rows, chunk_rows=chunk))
            assert (np.diff(row) >= 0).all()  # rows ascending (features in any order within a row)
            o = np.lexsort((feat, row))
            np.testing.assert_array_equal(row[o], want_row)
            np.testing.assert_array_equal(feat[o], want_feat)
            np.testing.assert_allclose(val[o], dense.numpy()[want_row, want_feat], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(sae.encode(rows).numpy()[row, feat], val)  # encode: the same codes, dense
    if kind == "topk":
        assert int((dense > 0).sum(1).max()) == K
    if kind == "jumprelu_negative_threshold":
        assert bool((val < 0).any())


def test_jumprelu_negative_codes_summed_not_counted(world: dict, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(M, D, generator=g) / D**0.5
    neg = tmp_path / "neg.safetensors"
    save_file({"W_enc": w.t().contiguous(), "W_dec": w.contiguous(), "b_enc": torch.zeros(M),
               "b_dec": torch.zeros(D), "threshold": torch.linspace(-0.4, 0.4, M)}, str(neg))
    with actstore.ActStore.open(world["truth"].path) as store:
        feature_pass(store, neg, FeaturePassConfig(layer=6, name="neg", batch_rows=64), sae_kind="jumprelu",
                     progress=False, overwrite=True)
        fs = store.features("neg")
        z = fs.codes(np.arange(fs.n_rows)).numpy()
        assert (z < 0).any()
        np.testing.assert_array_equal(fs.array("count"), (z > 0).sum(0))
        np.testing.assert_allclose(fs.array("sum"), z.astype(np.float64).sum(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(fs.array("hist").sum(1), (z > 0).sum(0))
        assert (fs.array("top_val") >= 0).all()


def test_batch_size_does_not_change_the_statistics(world: dict) -> None:
    """Many small batches (the running top-k threshold skips most candidates) against one batch of every row."""
    with actstore.ActStore.open(world["truth"].path) as store:
        n = store.num_rows("decision")
        for name, rows in (("small", 64), ("one", n)):
            feature_pass(store, world["topk"], FeaturePassConfig(layer=6, name=name, batch_rows=rows, top_k=40),
                         k=K, progress=False, overwrite=True)
        small, one = store.features("small"), store.features("one")
        for key in ("count", "hist", "count_by_step", "count_by_episode", "rows_by_step", "max", "top_val",
                    "top_row"):
            np.testing.assert_array_equal(small.array(key), one.array(key), err_msg=key)
        for key in ("sum", "sum_by_step"):
            np.testing.assert_allclose(small.array(key), one.array(key), rtol=1e-12, err_msg=key)
        assert (small.array("top_row") == -1).any()  # some feature fired fewer than 40 times: the slots stay empty
        feature_pass(store, world["topk"], FeaturePassConfig(layer=6, name="threads", batch_rows=64, top_k=40,
                                                             cpu_threads=2), k=K, progress=False, overwrite=True)
        threads = store.features("threads")
        for key in ("count", "hist", "count_by_step", "top_row"):
            np.testing.assert_array_equal(threads.array(key), small.array(key), err_msg=key)
        np.testing.assert_allclose(threads.array("top_val"), small.array("top_val"), rtol=1e-6)
    with pytest.raises(actstore.ConfigError, match="cpu_threads"):
        FeaturePassConfig(layer=6, cpu_threads=0)
