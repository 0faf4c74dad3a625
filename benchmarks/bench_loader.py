"""Shuffled-loader throughput against three baselines measured in the same run, and SAE training cost.

    python benchmarks/bench_loader.py                 # 1 GiB bf16, d=2048, batches of 4096 (page cache warm)
    python benchmarks/bench_loader.py --smoke         # tiny, seconds
    python benchmarks/bench_loader.py --device cuda   # also GB/s delivered to the GPU (pinned memory)

Baselines: (a) np.memmap random gather of 4096 sorted random rows per batch (the RAM ceiling), (b) ``torch.load``
of ``.pt`` chunks, 8 chunks concatenated + ``torch.randperm`` (the naive baseline), (c) zarr-python reading 8
random whole chunks (lz4 + bitshuffle, 4096-row chunks), concatenated and permuted. Data is generated once under
``benchmarks/_data/`` (or ``--data``) and reused.

Steady state (JSON ``steady``): one loader per store (lz4, none) and one ``np.memmap`` kept across epochs, as a
training loop keeps them, a warm-up epoch each, then ``--steady-rounds`` rotated rounds of one whole epoch each.

Peers (``benchmarks/_peers.py``), on the same rows in the same run: one shuffled pass over every row (rows/s and
CPU s per M rows) through zarr-python with actstore's own shards and codec, h5py + hdf5plugin blosc, safetensors and
``torch.save`` per batch, ``np.memmap`` and (``--saelens-python``) SAELens's cache, beside actstore's loader (lz4 and
none) timed the same way in ``--peer-rounds`` interleaved rounds, each as a ratio to the actstore lz4 loader; a
checked warm-up round verifies that every peer delivers every row once, bit-exact. JSON: ``peers``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import actstore

if not __package__:  # run as a script (python benchmarks/bench_loader.py): the repository root holds ``benchmarks``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._peers import run_section  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    """What to measure."""

    smoke: bool = False
    """Tiny sizes (seconds); used by the tests."""
    out: str | None = None
    """Write the results as JSON here."""
    data: str = str(Path(__file__).parent / "_data")
    """Where the generated data lives."""
    device: str = "cpu"
    """``cuda`` adds the GB/s delivered to the GPU with pinned memory."""
    batches: int = 64
    """Batches timed per strategy (after one warm-up pass over the data)."""
    steady_rounds: int = 5
    """Rounds of the steady-state comparison (one epoch of each long-lived loader and of the memmap per round)."""
    sae_steps: int = 6
    """SAE steps timed per mode."""
    peer_rounds: int = 3
    """Timed rounds of every peer's shuffled pass (after a checked warm-up round; one with ``smoke``)."""
    saelens_python: str | None = None
    """A Python interpreter with sae-lens installed (a separate venv) to time SAELens's cache among the peers."""


def gen_rows(rng: np.random.Generator, p: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Residual-stream-like rows as bf16 bits: per-dim Gaussians with lognormal scales, a few huge outlier dims,
    a low-rank shared component and a per-token norm scale."""
    d = p["sigma"].size
    x = rng.standard_normal((n, d), dtype=np.float32) * p["sigma"] + p["mu"]
    x += rng.standard_normal((n, p["U"].shape[0]), dtype=np.float32) @ p["U"]
    x *= np.exp(0.3 * rng.standard_normal((n, 1), dtype=np.float32))
    return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def make_data(root: Path, n: int, d: int, chunk: int) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    tag = f"{n}x{d}"
    paths = {"raw": root / f"{tag}.u16", "store": root / f"{tag}.actstore.zarr", "pt": root / f"{tag}_pt",
             "zarr": root / f"{tag}.zarr"}
    done = root / f"{tag}.done"
    if done.exists():
        return paths
    rng = np.random.default_rng(0)
    p = {"sigma": np.exp(rng.normal(-0.5, 0.6, d)).astype(np.float32), "mu": rng.normal(0, 0.1, d).astype(np.float32),
         "U": (rng.standard_normal((8, d)) * 0.5).astype(np.float32)}
    p["sigma"][rng.choice(d, 4, replace=False)] *= 60.0  # outlier dims
    mm = np.memmap(paths["raw"], dtype=np.uint16, mode="w+", shape=(n, d))
    paths["pt"].mkdir(exist_ok=True)
    import zarr
    from zarr.codecs import BloscCodec

    z = zarr.create_array(str(paths["zarr"]), shape=(n, d), chunks=(chunk, d), dtype="uint16", overwrite=True,
                          compressors=BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),
                          config={"write_empty_chunks": True})
    seq = 256
    with actstore.create(paths["store"], overwrite=True, chunk_rows=chunk) as w:
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            bits = gen_rows(rng, p, m)
            mm[s : s + m] = bits
            z[s : s + m] = bits
            acts = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
            torch.save(acts.clone(), paths["pt"] / f"{s // chunk:06d}.pt")
            r = np.arange(s, s + m)
            w.append("decision", rows={"sample": r // seq, "step": np.zeros(m, np.int64), "position": r % seq},
                     acts={14: acts})
    mm.flush()
    del mm
    done.write_text("ok")
    return paths


def none_copy(store_path: Path, n: int, chunk: int) -> Path:
    """The same rows as the lz4 store at ``store_path``, uncompressed (codec "none"): made once beside it."""
    none_path = store_path.with_name(store_path.name.replace(".actstore.", ".actstore-none."))
    if not (none_path / "zarr.json").exists():
        store = actstore.ActStore.open(store_path)
        with actstore.create(none_path, overwrite=True, chunk_rows=chunk, codec="none") as w:
            for s in range(0, n, chunk):
                m = min(chunk, n - s)
                w.append("decision", rows={k: v[s : s + m] for k, v in store.rows("decision").items()},
                         acts={14: store[14, "decision"][s : s + m]})
    return none_path


def _rate(rows: int, seconds: float, d: int) -> dict[str, float]:
    return {"rows_per_s": rows / seconds, "GB_per_s": rows * d * 2 / seconds / 1e9, "seconds": seconds}


def bench_memmap(path: Path, n: int, d: int, batch: int, n_batches: int) -> dict[str, float]:
    mm = np.memmap(path, dtype=np.uint16, mode="r", shape=(n, d))
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        idx = np.sort(rng.choice(n, batch, replace=False))
        t = torch.from_numpy(mm[idx]).view(torch.bfloat16)
        assert t.shape[0] == batch
    return _rate(batch * n_batches, time.perf_counter() - t0, d)


def _chunked(read: Any, n_chunks: int, k: int, batch: int, n_batches: int, d: int) -> dict[str, float]:
    rng = np.random.default_rng(2)
    order = rng.permutation(n_chunks)
    done, pos = 0, 0
    t0 = time.perf_counter()
    while done < n_batches:
        buf = torch.cat([read(int(c)) for c in order[pos : pos + k]])
        pos = (pos + k) % n_chunks
        perm = torch.randperm(buf.shape[0])
        for b in range(buf.shape[0] // batch):
            x = buf[perm[b * batch : (b + 1) * batch]]
            assert x.shape[0] == batch
            done += 1
            if done == n_batches:
                break
    return _rate(batch * n_batches, time.perf_counter() - t0, d)


def bench_torch_load(path: Path, n_chunks: int, k: int, batch: int, n_batches: int, d: int) -> dict[str, float]:
    files = sorted(path.glob("*.pt"))
    return _chunked(lambda c: torch.load(files[c], weights_only=True), n_chunks, k, batch, n_batches, d)


def bench_zarr(path: Path, chunk: int, n_chunks: int, k: int, batch: int, n_batches: int, d: int) -> dict[str, float]:
    import zarr

    z = zarr.open_array(str(path), mode="r")
    return _chunked(lambda c: torch.from_numpy(z[c * chunk : (c + 1) * chunk]).view(torch.bfloat16), n_chunks, k,
                    batch, n_batches, d)


def bench_actstore(store: actstore.ActStore, batch: int, n_batches: int, d: int, **kw: Any) -> dict[str, float]:
    loader = store.loader(14, "decision", batch_size=batch, **kw)
    done = 0
    t0 = time.perf_counter()
    while done < n_batches:
        for x in loader:
            assert x.shape[0] <= batch
            done += 1
            if done == n_batches:
                break
    if kw.get("device"):
        torch.cuda.synchronize()
    return _rate(batch * n_batches, time.perf_counter() - t0, d)


def bench_steady(raw: Path, stores: dict[str, actstore.ActStore], n: int, d: int, batch: int,
                 rounds: int) -> dict[str, Any]:
    """Training's steady state: one loader per store and one ``np.memmap``, each kept across epochs (as a training
    loop keeps them), a warm-up epoch each, then ``rounds`` rounds of one epoch each, the order rotated every round;
    median rows/s and the ratio to the memmap gather (one permutation per epoch, each batch's indices sorted)."""
    mm = np.memmap(raw, dtype=np.uint16, mode="r", shape=(n, d))
    rng = np.random.default_rng(3)

    def memmap_epoch() -> int:
        perm = rng.permutation(n)
        for s in range(0, n - batch + 1, batch):
            torch.from_numpy(mm[np.sort(perm[s : s + batch])]).view(torch.bfloat16)
        return n // batch * batch

    def loader_epoch(loader: Any) -> int:
        return sum(int(x.shape[0]) for x in loader)

    epochs = {"memmap": memmap_epoch}
    for name, store in stores.items():
        loader = store.loader(14, "decision", batch_size=batch)
        epochs[name] = lambda loader=loader: loader_epoch(loader)
    for epoch in epochs.values():
        epoch()
    rates: dict[str, list[float]] = {name: [] for name in epochs}
    names = list(epochs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            rows = epochs[name]()
            rates[name].append(rows / (time.perf_counter() - t0))
    out: dict[str, Any] = {"rounds": rounds}
    for name, values in rates.items():
        med = float(np.median(values))
        out[name] = {"rows_per_s": med, "GB_per_s": med * d * 2 / 1e9, "all_rows_per_s": values,
                     "vs_memmap": med / float(np.median(rates["memmap"]))}
    return out


def bench_sae(store: actstore.ActStore, batch: int, steps: int, d: int, m: int, rounds: int = 3,
              device: str = "cpu") -> dict[str, float]:
    """SAE training steps/s with batches from the loader vs from memory (on ``device``), interleaved, medians."""
    from actstore.train._sae import TopKSAE

    mem = store[14, "decision"][: batch * 4].float().to(device)
    gpu = device.startswith("cuda")
    epochs = store.loader(14, "decision", batch_size=batch, dtype="float32",
                          **({"device": device, "pin_memory": True} if gpu else {}))

    def forever() -> Any:  # each pass over ``epochs`` is one epoch; training runs across epochs
        while True:
            yield from epochs

    loader = forever()
    torch.manual_seed(0)
    sae = TopKSAE(d, m, 32).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)

    def step(x: torch.Tensor) -> None:
        xhat, _ = sae(x)
        loss = (xhat - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(mem[:batch])  # warm-up (the loader prefetches meanwhile)
    rates: dict[str, list[float]] = {"memory": [], "loader": []}
    for _ in range(rounds):
        for mode in ("memory", "loader"):
            t0 = time.perf_counter()
            for i in range(steps):
                step(next(loader) if mode == "loader" else mem[(i % 4) * batch : (i % 4 + 1) * batch])
            if gpu:
                torch.cuda.synchronize()
            rates[mode].append(steps / (time.perf_counter() - t0))
    out = {f"{k}_steps_per_s": float(np.median(v)) for k, v in rates.items()}
    out["loader_cost"] = 1 - out["loader_steps_per_s"] / out["memory_steps_per_s"]
    out["d_sae"] = m
    return out


def run(cfg: BenchConfig) -> dict[str, Any]:
    d, batch, chunk, k = (64, 256, 512, 8) if cfg.smoke else (2048, 4096, 4096, 8)
    n = 16 * chunk if cfg.smoke else (1 << 30) // (d * 2)
    n_batches = 6 if cfg.smoke else cfg.batches
    root = Path(cfg.data) if not cfg.smoke else Path(cfg.data) / "smoke"
    t0 = time.perf_counter()
    paths = make_data(root, n, d, chunk)
    res: dict[str, Any] = {"n_rows": n, "d": d, "batch": batch, "chunk_rows": chunk, "buffer_chunks": k,
                           "gen_s": time.perf_counter() - t0, "cpus": os.cpu_count()}
    store = actstore.ActStore.open(paths["store"])
    none_path = none_copy(paths["store"], n, chunk)
    store_none = actstore.ActStore.open(none_path)
    # warm the page cache once
    for p in (paths["raw"], *paths["store"].rglob("*"), *none_path.rglob("*"), *paths["pt"].glob("*"),
              *paths["zarr"].rglob("*")):
        if p.is_file():
            p.read_bytes()
    n_chunks = n // chunk
    res["memmap_gather"] = bench_memmap(paths["raw"], n, d, batch, n_batches)
    res["torch_load"] = bench_torch_load(paths["pt"], n_chunks, k, batch, n_batches, d)
    res["zarr_python"] = bench_zarr(paths["zarr"], chunk, n_chunks, k, batch, n_batches, d)
    bench_actstore(store, batch, 4, d)  # warm-up: allocates the buffers once
    res["actstore"] = bench_actstore(store, batch, n_batches, d)
    res["actstore_ring"] = bench_actstore(store, batch, n_batches, d, reuse_buffers=True)
    res["actstore_fp32"] = bench_actstore(store, batch, n_batches, d, dtype="float32")
    bench_actstore(store_none, batch, 4, d)
    res["actstore_none"] = bench_actstore(store_none, batch, n_batches, d)
    res["steady"] = bench_steady(paths["raw"], {"actstore_lz4": store, "actstore_none": store_none}, n, d, batch,
                                 1 if cfg.smoke else cfg.steady_rounds)
    if cfg.device.startswith("cuda"):
        if torch.cuda.is_available():
            bench_actstore(store, batch, 4, d, pin_memory=True, device=cfg.device)
            res["actstore_to_gpu"] = bench_actstore(store, batch, n_batches, d, pin_memory=True, device=cfg.device)
            bench_actstore(store_none, batch, 4, d, pin_memory=True, device=cfg.device)
            res["actstore_none_to_gpu"] = bench_actstore(store_none, batch, n_batches, d, pin_memory=True,
                                                         device=cfg.device)
            res["sae_gpu"] = bench_sae(store, batch, 64, d, 8 * d, device=cfg.device)
        else:
            print("no CUDA device; skipped")
    res["sae"] = bench_sae(store, batch if not cfg.smoke else 128, 2 if cfg.smoke else cfg.sae_steps, d,
                           d if not cfg.smoke else 2 * d)
    u16_ND = np.fromfile(paths["raw"], dtype=np.uint16).reshape(n, d)
    res["peers"] = run_section(u16_ND, root / "peers", ("load",), 1 if cfg.smoke else cfg.peer_rounds, 20, 0,
                               cfg.saelens_python)
    return res


def report(res: dict[str, Any]) -> None:
    ours = res["actstore"]["rows_per_s"]
    print(f"{res['n_rows']} rows x d={res['d']} bf16, batches of {res['batch']}, chunks of {res['chunk_rows']}, "
          f"shuffle buffer {res['buffer_chunks']} chunks, {res['cpus']} CPUs, page cache warm")
    print(f"{'strategy':<34}{'rows/s':>12}{'GB/s':>8}{'actstore / this':>17}")
    names = {"memmap_gather": "(a) np.memmap random gather", "torch_load": "(b) torch.load .pt + randperm",
             "zarr_python": "(c) zarr-python random chunks", "actstore": "actstore loader (bf16)",
             "actstore_ring": "actstore, reuse_buffers=True", "actstore_fp32": "actstore loader -> float32",
             "actstore_none": "actstore, codec none (bf16)", "actstore_to_gpu": "actstore -> GPU (pinned)",
             "actstore_none_to_gpu": "actstore codec none -> GPU (pinned)"}
    for key, label in names.items():
        if key in res:
            r = res[key]
            print(f"{label:<34}{r['rows_per_s']:>12,.0f}{r['GB_per_s']:>8.2f}{ours / r['rows_per_s']:>16.2f}x")
    st = res["steady"]
    print(f"\nSteady state (one loader / memmap kept across epochs, {st['rounds']} rounds of one epoch, medians):")
    for key in ("memmap", "actstore_lz4", "actstore_none"):
        r = st[key]
        print(f"  {key:<16}{r['rows_per_s']:>12,.0f} rows/s {r['GB_per_s']:>6.2f} GB/s  {r['vs_memmap']:.2f}x memmap")
    s = res["sae"]
    print(f"SAE (d={res['d']}, {s['d_sae']} latents, k=32) steps/s: in memory {s['memory_steps_per_s']:.3f}, "
          f"from the loader {s['loader_steps_per_s']:.3f} (loader cost {100 * s['loader_cost']:.1f}%)")
    if "sae_gpu" in res:
        g = res["sae_gpu"]
        print(f"SAE on the GPU (d={res['d']}, {g['d_sae']} latents, k=32) steps/s: in GPU memory "
              f"{g['memory_steps_per_s']:.2f}, from the loader {g['loader_steps_per_s']:.2f} "
              f"(loader cost {100 * g['loader_cost']:.1f}%; {g['loader_steps_per_s'] * res['batch'] / 1e6:.2f} M tokens/s)")
    p = res["peers"]
    print(f"\nPeers: one shuffled pass over the same {p['rows']:,} rows in batches of {p['batch']}, {p['rounds']} "
          f"interleaved round(s) after a checked warm-up, medians; ratios to the actstore lz4 loader timed the same "
          f"way (every peer delivered every row once, bit-exact: {'yes' if p['all_checks_passed'] else 'NO'})\n")
    print(p["table_markdown"])


def main(cfg: BenchConfig) -> dict[str, Any]:
    res = run(cfg)
    report(res)
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    import tyro

    sys.exit(0 if main(tyro.cli(BenchConfig))["peers"]["all_checks_passed"] else 1)
