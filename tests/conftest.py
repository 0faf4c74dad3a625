"""Shared fixtures: a round-trip harness that writes a small store with the public API and keeps the numpy truth."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import actstore


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """For bit-exact comparisons of two model runs: with one intra-op thread ATen splits work the same way every
    time, so a SIMD/scalar boundary (an ulp apart for exp and friends) cannot move between the runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Truth:
    """What was written, as numpy (bf16 as float32 values and as uint16 bits)."""

    path: Path
    acts: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    rows: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    cond: torch.Tensor | None = None
    cond_rows: dict[str, np.ndarray] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)


def write_store(
    path: Path,
    *,
    n_samples: int = 24,
    steps: int = 4,
    horizon: int = 5,
    prompt_len: int = 7,
    d: int = 32,
    layers: tuple[int, ...] = (6, 10),
    dtype: torch.dtype = torch.bfloat16,
    batch: int = 5,
    seed: int = 0,
    **config: Any,
) -> Truth:
    """Write a pi0-like store (decision rows per step, instruction rows, adarms cond, samples) in batches."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    truth = Truth(path)
    dec_parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    ins_parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    dec_rows: list[dict[str, np.ndarray]] = []
    ins_rows: list[dict[str, np.ndarray]] = []
    cond_parts: list[torch.Tensor] = []
    cond_rows: list[dict[str, np.ndarray]] = []
    masks, prompts, episodes = [], [], []
    config.setdefault("chunk_rows", 64)
    config.setdefault("block_rows", 16)
    with actstore.create(path, attrs={"model": {"name": "test"}}, **config) as w:
        for b0 in range(0, n_samples, batch):
            ids = np.arange(b0, min(n_samples, b0 + batch))
            lengths = rng.integers(1, prompt_len + 1, size=ids.size)
            mask = np.arange(prompt_len)[None, :] < lengths[:, None]
            prompt = [f"task {int(i)} é" for i in ids]
            ep = ids // 3
            w.append_samples(ids, prompt=prompt, instruction_mask=mask, episode=ep)
            masks.append(mask)
            prompts += prompt
            episodes.append(ep)
            # instruction rows: real prompt tokens only
            s_i, p_i = np.nonzero(mask)
            rows = {"sample": ids[s_i], "step": np.full(s_i.size, actstore.NO_STEP), "position": p_i}
            acts = {layer: torch.randn(s_i.size, d, generator=g).to(dtype) for layer in layers}
            w.append("instruction", rows=rows, acts=acts)
            ins_rows.append(rows)
            for layer in layers:
                ins_parts[layer].append(acts[layer])
            for t in range(steps):
                n = ids.size * horizon
                rows = {
                    "sample": np.repeat(ids, horizon),
                    "step": np.full(n, t),
                    "position": np.tile(np.arange(horizon), ids.size),
                }
                acts = {layer: (torch.randn(n, d, generator=g) * (layer + 1)).to(dtype) for layer in layers}
                w.append("decision", rows=rows, acts=acts)
                dec_rows.append(rows)
                for layer in layers:
                    dec_parts[layer].append(acts[layer])
                c = torch.randn(ids.size, d, generator=g)
                crow = {"sample": ids, "step": np.full(ids.size, t)}
                w.append_cond("adarms", rows=crow, acts=c)
                cond_parts.append(c)
                cond_rows.append(crow)
    for layer in layers:
        truth.acts[("decision", layer)] = torch.cat(dec_parts[layer])
        truth.acts[("instruction", layer)] = torch.cat(ins_parts[layer])
    truth.rows["decision"] = {k: np.concatenate([r[k] for r in dec_rows]) for k in dec_rows[0]}
    truth.rows["instruction"] = {k: np.concatenate([r[k] for r in ins_rows]) for k in ins_rows[0]}
    truth.cond = torch.cat(cond_parts)
    truth.cond_rows = {k: np.concatenate([r[k] for r in cond_rows]) for k in cond_rows[0]}
    truth.samples = {
        "sample": np.arange(n_samples),
        "instruction_mask": np.concatenate(masks),
        "prompt": prompts,
        "episode": np.concatenate(episodes),
    }
    return truth


@pytest.fixture(params=["zarr", "hdf5"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_path(tmp_path: Path, backend: str) -> Path:
    return tmp_path / ("run.zarr" if backend == "zarr" else "run.h5")


@pytest.fixture
def written(store_path: Path) -> Truth:
    return write_store(store_path)


@contextmanager
def moto_s3(mp: pytest.MonkeyPatch, *, bucket: str = "acts", endpoint_env: bool = False) -> Iterator[str]:
    """A real S3 API (moto's server on a free loopback port) with ``bucket`` created and test credentials in the
    environment (also ``AWS_ENDPOINT_URL`` with ``endpoint_env``); yields the endpoint URL. Skips without moto/s3fs."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    if endpoint_env:
        env["AWS_ENDPOINT_URL"] = endpoint
    for key, value in env.items():
        mp.setenv(key, value)
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    try:
        yield endpoint
    finally:
        server.stop()
