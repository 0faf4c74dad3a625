"""Feature pass (``actstore features``) against the loader reading the same (layer, role) of the same store.

    python -m benchmarks.bench_features                  # 256 MiB of bf16 decision rows, d=1024, SAE 1024 -> 8192
    python -m benchmarks.bench_features --smoke          # tiny, seconds (the test runs this)

Three rates over one capture-like store (samples of 10 denoising steps x 50 action tokens, tasks and episodes in
the sample table), interleaved rounds, median:

- ``loader``: ``store.loader(layer, role, shuffle=False)`` read to the end, batches moved to the SAE's device (the
  baseline: what a consumer of the rows can get);
- ``feature_pass``: :func:`actstore._features_pass.feature_pass`, the whole pass (read, encode, top-k, histograms,
  density by step / task / episode) into a derived group;
- ``encode_only``: the SAE's ``encode`` alone on one resident batch on the device (no I/O): when it is not well
  above the loader's rate, the SAE is the bottleneck and the ratio says little about the pass's own overhead.

Target: ``feature_pass / loader >= 0.8`` when the SAE is not the bottleneck.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import tyro
from safetensors.torch import save_file

import actstore
from actstore._features_pass import FeaturePassConfig, feature_pass, load_sae

LAYER, ROLE = 14, "decision"
STEPS, HORIZON = 10, 50


def _make_store(path: Path, n_rows: int, d: int, chunk_rows: int) -> None:
    from benchmarks._data_gen import ActGenerator, ActProfile

    gen = ActGenerator(ActProfile(d=d, seq_len=HORIZON))
    per_sample = STEPS * HORIZON
    n_samples = -(-n_rows // per_sample)
    batch = max(1, (chunk_rows * 4) // per_sample)
    with actstore.create(path, chunk_rows=chunk_rows, autocommit=False) as w:
        row = 0
        for s0 in range(0, n_samples, batch):
            ids = np.arange(s0, min(n_samples, s0 + batch))
            w.append_samples(ids, prompt=[f"task {int(i) % 10}" for i in ids], task=ids % 10, episode=ids // 4)
            for t in range(STEPS):
                n = ids.size * HORIZON
                rows = {"sample": np.repeat(ids, HORIZON), "step": np.full(n, t),
                        "position": np.tile(np.arange(HORIZON), ids.size)}
                w.append(ROLE, rows=rows, acts={LAYER: gen.rows(row, n)})
                row += n
            w.commit({"samples": int(ids[-1]) + 1})


def _sae(path: Path, d: int, m: int) -> Path:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(m, d, generator=g) / d**0.5
    save_file({"W_enc": w.t().contiguous(), "W_dec": w, "b_enc": torch.zeros(m), "b_dec": torch.zeros(d)}, str(path))
    return path


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _loader_rate(store: actstore.ActStore, batch: int, dev: torch.device) -> float:
    opts = {"pin_memory": True, "device": str(dev)} if dev.type == "cuda" else {}
    ld = store.loader(LAYER, ROLE, batch_size=batch, shuffle=False, **opts)
    t0, n = time.perf_counter(), 0
    for x in ld:
        x = x.to(dev, non_blocking=True)
        n += len(x)
    _sync(dev)
    ld.close()
    return n / (time.perf_counter() - t0)


def _pass_rate(store: actstore.ActStore, sae: Path, k: int, batch: int, dev: torch.device, n: int) -> float:
    cfg = FeaturePassConfig(layer=LAYER, role=ROLE, name="bench", batch_rows=batch, device=str(dev))
    t0 = time.perf_counter()
    feature_pass(store, sae, cfg, k=k, overwrite=True, resume=False, progress=False)
    return n / (time.perf_counter() - t0)


def _encode_rate(sae_path: Path, k: int, x: torch.Tensor, dev: torch.device, reps: int) -> float:
    sae = load_sae(sae_path, k=k).to(dev)
    x = x.to(dev)
    sae.encode(x)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        sae.encode(x)
    _sync(dev)
    return reps * len(x) / (time.perf_counter() - t0)


def main(smoke: bool = False, size_mib: int = 256, d: int = 1024, d_sae: int = 8192, k: int = 32,
         batch_rows: int = 8192, rounds: int = 3, device: str | None = None, out: Path | None = None,
         work_dir: Path | None = None) -> dict:
    """Time the feature pass against the loader over one store.

    Args:
        smoke: tiny sizes (d=64, 128 latents, 4 chunks), finishes in seconds.
        size_mib: store size (bf16 rows of width d).
        d: row width (the action expert's width is 1024 in pi0.5).
        d_sae: SAE latents.
        k: TopK active latents.
        batch_rows: rows per batch of both the loader and the pass.
        rounds: interleaved timing rounds (median reported).
        device: where the SAE runs and the loader delivers (default: cuda when available, else cpu).
        out: write the results as JSON here.
        work_dir: scratch directory (default: a temporary one).
    """
    if smoke:
        d, d_sae, k, batch_rows, rounds = 64, 128, 8, 1024, 1
    chunk_rows = 1024 if smoke else 4096
    n_rows = 4 * chunk_rows if smoke else size_mib * (1 << 20) // (2 * d) // chunk_rows * chunk_rows
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    work = Path(tempfile.mkdtemp(dir=work_dir))
    try:
        src = work / "run.zarr"
        _make_store(src, n_rows, d, chunk_rows)
        sae = _sae(work / "sae.safetensors", d, d_sae)
        times: dict[str, list[float]] = {"loader": [], "feature_pass": []}
        with actstore.ActStore.open(src) as store:
            n = store.num_rows(ROLE)
            _loader_rate(store, batch_rows, dev)  # warm the page cache and the device
            for _ in range(rounds):
                times["loader"].append(_loader_rate(store, batch_rows, dev))
                times["feature_pass"].append(_pass_rate(store, sae, k, batch_rows, dev, n))
            x = store[LAYER, ROLE][:batch_rows]
            fs = store.features("bench")
            assert fs.n_rows == n and int(fs.array("rows_by_step").sum()) == n
        rate = {key: statistics.median(v) for key, v in times.items()}
        rate["encode_only"] = _encode_rate(sae, k, x, dev, reps=2 if smoke else 20)
        res = {"rows": n, "d": d, "d_sae": d_sae, "k": k, "batch_rows": batch_rows, "device": str(dev),
               "bytes": n * d * 2, "rounds": rounds, "rows_per_s": rate, "runs": times,
               "pass_vs_loader": rate["feature_pass"] / rate["loader"],
               "sae_bound": rate["encode_only"] < 1.25 * rate["loader"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = "smoke" if smoke else f"{res['bytes'] / 2**20:.0f} MiB"
    print(f"# feature pass vs loader ({size}, {n:,} rows, d={d}, bf16, lz4; SAE {d}->{d_sae} TopK k={k} on {dev})\n")
    print("| path | rows/s | GB/s read | ratio to loader | target |")
    print("|---|---|---|---|---|")
    for key in ("loader", "feature_pass", "encode_only"):
        r = rate[key]
        target = ">= 0.8x" if key == "feature_pass" else "-"
        print(f"| {key} | {r / 1e3:.1f} k | {r * d * 2 / 1e9:.2f} | {r / rate['loader']:.2f}x | {target} |")
    if res["sae_bound"]:
        print("\nThe SAE is the bottleneck here (encode alone is < 1.25x the loader's rate): the ratio measures the "
              "SAE, not the pass's overhead.")
    if out is not None:
        Path(out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    tyro.cli(main)
