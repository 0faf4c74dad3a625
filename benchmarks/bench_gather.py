"""How the loader gathers a batch: its one multi-threaded ``torch.index_select`` against an ``np.take`` gather
(a ``memcpy`` per row, GIL released, split over the decode threads once the next buffer is decoded), in the same
process, under two consumers.

    python -m benchmarks.bench_gather                  # 1 GiB bf16, d=2048, lz4 and codec none, 6 rounds
    python -m benchmarks.bench_gather --smoke          # tiny, seconds (the test runs this)

One long-lived loader per store (a checked warm-up epoch per gather first, as training keeps its loader across
epochs); each round runs one epoch with each gather, the side that goes first alternating; medians, the ratio, and
the CPU each used (user + system over wall time). Consumers: ``idle`` takes the batches and does nothing (and this
process runs no other torch op); ``torch`` sums each batch in float32 on the consumer thread, as any training
step runs torch ops there. ``torch.index_select``'s OpenMP workers spin for a while after each call; whether that
costs the decode threads a core depends on what the rest of the process does with OpenMP, so the two consumers
can rank the gathers differently. Same data as ``bench_loader`` (``benchmarks/_data``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

import actstore
from actstore.read._blocks import decode_pool
from actstore.train import _pipeline

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_loader import make_data, none_copy  # noqa: E402


@dataclass(frozen=True)
class Config:
    """What to measure."""

    smoke: bool = False
    """Tiny sizes (seconds); used by the tests."""
    rounds: int = 6
    """Interleaved rounds (one epoch of each gather per round)."""
    data: str = str(Path(__file__).parent / "_data")
    """Where the generated data lives (shared with ``bench_loader``)."""
    out: str | None = None
    """Write the results as JSON here."""
    one: str | None = None
    """Internal: run only ``codec:consumer`` in this process and print its JSON (the parent runs each in a fresh
    interpreter)."""


CONSUMERS = ("idle", "torch")


def _take_rows(buf: np.ndarray, idx: np.ndarray, out: np.ndarray, parts: int) -> None:
    """``out[:] = buf[idx]`` by ``np.take(mode="clip")`` (``mode="raise"`` goes through a temporary), split over
    ``parts`` threads: this one and ``parts - 1`` decode-pool jobs. ``idx`` are always in range here."""
    bounds = np.linspace(0, idx.size, parts + 1).astype(np.int64).tolist()
    jobs = [decode_pool().submit(np.take, buf, idx[a:b], 0, out[a:b], "clip")
            for a, b in zip(bounds[1:-1], bounds[2:], strict=True)]
    np.take(buf, idx[: bounds[1]], axis=0, out=out[: bounds[1]], mode="clip")
    for job in jobs:
        job.result()


def _take_gather(self: Any, buf: np.ndarray, idx: np.ndarray, slot: int | None) -> torch.Tensor:
    """The alternative: bf16 rows by ``np.take``, split over the decode threads whenever they have no decode
    queued (the decode pool's queue is empty)."""
    out = (self.fresh.take() if slot is None else self.ring[slot])[: idx.size]
    parts = 1 if decode_pool()._work_queue.qsize() else max(1, min(8, os.cpu_count() or 1))  # noqa: SLF001
    _take_rows(buf, idx, out.view(torch.int16).numpy().view(buf.dtype), parts)
    return out


def _fingerprint(loader: Any) -> int:
    """An order-free fingerprint of one epoch's rows (sum of per-row hashes): equal for both gathers iff they
    deliver the same rows (checked in the warm-up, so that the baseline is a real, right gather)."""
    total = 0
    weights: np.ndarray | None = None
    for x in loader:  # numpy only: no torch op on this thread before the ``idle`` consumer's rounds
        bits = x.view(torch.int16).numpy().astype(np.int64)
        if weights is None:
            weights = np.random.default_rng(0).integers(1, 1 << 20, bits.shape[1])
        total += int((bits @ weights).sum())
    return total


def _epoch(loader: Any, consumer: str) -> tuple[float, float, int]:
    """One epoch: (wall seconds, CPU seconds of the process, rows)."""
    c0, t0 = os.times(), time.perf_counter()
    rows = 0
    for x in loader:
        rows += int(x.shape[0])
        if consumer == "torch":
            x.sum(dtype=torch.float32)
    wall, c1 = time.perf_counter() - t0, os.times()
    return wall, (c1.user - c0.user) + (c1.system - c0.system), rows


def compare(store: actstore.ActStore, batch: int, rounds: int, consumer: str) -> dict[str, Any]:
    """Both gathers on one long-lived loader of ``store``'s layer 14, interleaved."""
    ours = _pipeline._LayerOutput.gather  # noqa: SLF001
    gathers = {"torch_index_select": ours, "np_take": _take_gather}
    loader = store.loader(14, "decision", batch_size=batch, seed=0)
    rates: dict[str, list[float]] = {k: [] for k in gathers}
    cpus: dict[str, list[float]] = {k: [] for k in gathers}
    try:
        prints = {}
        for name, gather in gathers.items():  # warm-up: buffers allocated, pages touched, threads started
            _pipeline._LayerOutput.gather = gather  # type: ignore[method-assign]  # noqa: SLF001
            prints[name] = _fingerprint(loader)
        if len(set(prints.values())) != 1:
            raise AssertionError(f"the two gathers delivered different rows: {prints}")
        for r in range(rounds):
            for name in list(gathers)[:: 1 if r % 2 == 0 else -1]:
                _pipeline._LayerOutput.gather = gathers[name]  # type: ignore[method-assign]  # noqa: SLF001
                wall, cpu, rows = _epoch(loader, consumer)
                rates[name].append(rows / wall)
                cpus[name].append(cpu / wall)
    finally:
        _pipeline._LayerOutput.gather = ours  # type: ignore[method-assign]  # noqa: SLF001
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"rows_per_s": med, "all_rows_per_s": rates, "cpu_cores": {k: statistics.median(v) for k, v in cpus.items()},
            "np_take_vs_index_select": med["np_take"] / med["torch_index_select"],
            "rounds_np_take_faster": sum(a > b for a, b in zip(rates["np_take"], rates["torch_index_select"],
                                                              strict=True))}


def _consumer_process(codec: str, consumer: str, cfg: Config) -> dict[str, Any]:
    """One (codec, consumer) comparison in a fresh interpreter: whether this process ran torch ops before matters."""
    cmd = [sys.executable, "-m", "benchmarks.bench_gather", "--one", f"{codec}:{consumer}", "--rounds",
           str(cfg.rounds), "--data", cfg.data] + (["--smoke"] if cfg.smoke else [])
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=False,
                          timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{codec}:{consumer} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _stores(cfg: Config) -> tuple[dict[str, Path], int, int, int]:
    """The lz4 and codec-none stores of the same rows (made once, shared with ``bench_loader``)."""
    d, batch, chunk = (64, 256, 512) if cfg.smoke else (2048, 4096, 4096)
    n = 16 * chunk if cfg.smoke else (1 << 30) // (d * 2)
    paths = make_data(Path(cfg.data) / "smoke" if cfg.smoke else Path(cfg.data), n, d, chunk)
    return {"lz4": paths["store"], "none": none_copy(paths["store"], n, chunk)}, n, d, batch


def run(cfg: Config) -> dict[str, Any]:
    stores, n, d, batch = _stores(cfg)
    rounds = 1 if cfg.smoke else cfg.rounds
    if cfg.one is not None:  # the child: one comparison
        codec, consumer = cfg.one.split(":")
        return compare(actstore.ActStore.open(stores[codec]), batch, rounds, consumer)
    res: dict[str, Any] = {"n_rows": n, "d": d, "batch": batch, "rounds": rounds, "cpus": os.cpu_count()}
    for consumer in CONSUMERS:
        for codec in stores:
            res[f"{codec}:{consumer}"] = _consumer_process(codec, consumer, cfg)
    return res


def main(cfg: Config) -> dict[str, Any]:
    res = run(cfg)
    if cfg.one is not None:
        print(json.dumps(res))
        return res
    print(f"{res['n_rows']} rows x d={res['d']} bf16, batches of {res['batch']}, {res['rounds']} rounds, "
          f"{res['cpus']} CPUs: one long-lived loader, an epoch per gather per round, medians")
    print(f"{'codec:consumer':<16}{'index_select rows/s':>21}{'np.take rows/s':>16}{'np.take / is':>14}"
          f"{'CPU cores (is / take)':>24}")
    for key in (f"{c}:{k}" for k in CONSUMERS for c in ("lz4", "none")):
        r = res[key]
        print(f"{key:<16}{r['rows_per_s']['torch_index_select']:>21,.0f}{r['rows_per_s']['np_take']:>16,.0f}"
              f"{r['np_take_vs_index_select']:>13.2f}x{r['cpu_cores']['torch_index_select']:>12.2f} / "
              f"{r['cpu_cores']['np_take']:.2f}   (np.take faster in {r['rounds_np_take_faster']} of "
              f"{res['rounds']} rounds)")
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main(tyro.cli(Config))
