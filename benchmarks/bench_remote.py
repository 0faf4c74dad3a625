"""Object storage vs the local disk: the same store written to and read from an S3 server (moto, on loopback).

Measures write GB/s, sequential read GB/s and shuffled-loader rows/s for both, in one run, and prints the
ratios. moto is a Python server sharing this machine's cores, so the S3 numbers are a floor for a real object
store, not a prediction of one; the point is that the path works end to end and what it costs per request.

    python benchmarks/bench_remote.py [--smoke] [--mib 128] [--out results.json]
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

import actstore


@dataclass(frozen=True)
class RemoteBench:
    """What to measure."""

    smoke: bool = False
    """Tiny sizes (seconds); used by the tests."""
    mib: int = 128
    """MiB of bf16 activations (d=2048) to write and read."""
    out: str | None = None
    """Write the results as JSON here."""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed(fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(path: str, acts: torch.Tensor, chunk_rows: int, opts: dict | None) -> dict[str, float]:
    n = acts.shape[0]
    rows = {"sample": np.arange(n) // 16, "step": np.zeros(n, np.int64), "position": np.arange(n)}

    def write() -> None:
        with actstore.create(path, overwrite=True, chunk_rows=chunk_rows, storage_options=opts) as w:
            for s in range(0, n, chunk_rows):
                w.append("decision", rows={k: v[s : s + chunk_rows] for k, v in rows.items()},
                         acts={14: acts[s : s + chunk_rows]})

    t_write, _ = _timed(write)
    store = actstore.ActStore.open(path, storage_options=opts, cache_bytes=0)
    t_seq, got = _timed(lambda: store[14, "decision"][:])
    assert torch.equal(got, acts), "round trip is not bit-exact"
    batch = min(4096, n // 4)

    def shuffled() -> int:
        return sum(b.shape[0] for b in store.loader(14, "decision", batch_size=batch, shuffle_chunks=4))

    t_load, seen = _timed(shuffled)
    nbytes = acts.numel() * 2
    return {"write_GBps": nbytes / t_write / 1e9, "seq_read_GBps": nbytes / t_seq / 1e9,
            "loader_rows_per_s": float(seen) / t_load, "chunks_per_array": -(-n // chunk_rows)}


def main(cfg: RemoteBench) -> dict:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise

    mib = 4 if cfg.smoke else cfg.mib
    d, chunk_rows = (256, 512) if cfg.smoke else (2048, 4096)
    n = mib * (1 << 20) // (2 * d)
    acts = (torch.randn(n, d, generator=torch.Generator().manual_seed(0)) * 3).to(torch.bfloat16)
    port = _port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    tmp = Path(tempfile.mkdtemp(prefix="actstore-remote-"))
    try:
        local = measure(str(tmp / "run.zarr"), acts, chunk_rows, None)
        s3 = measure("s3://bench/run.zarr", acts, chunk_rows, {"endpoint_url": endpoint})
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"mib": mib, "d": d, "rows": n, "chunk_rows": chunk_rows, "local": local, "s3_moto": s3}
    print(f"{mib} MiB bf16, d={d}, chunks of {chunk_rows} rows ({local['chunks_per_array']} chunks an array: one PUT "
          "each on write, one GET each on a sequential or shuffled read)")
    print(f"{'metric':<24}{'local disk':>14}{'S3 (moto)':>14}{'S3 / local':>12}")
    for key, unit in (("write_GBps", "GB/s"), ("seq_read_GBps", "GB/s"), ("loader_rows_per_s", "rows/s")):
        a, b = local[key], s3[key]
        print(f"{key + ' (' + unit + ')':<24}{a:>14,.3f}{b:>14,.3f}{b / a:>11.2f}x")
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main(tyro.cli(RemoteBench))
