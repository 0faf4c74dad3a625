"""SAELens's cached-activation path, timed for ``bench_peers.py`` in a separate interpreter that has sae-lens.

    /path/to/saelens-venv/bin/python benchmarks/_peer_saelens.py ROWS.npy WORKDIR SEED LATENCY_ROWS [--check]

sae-lens pins its own transformers / datasets stack, so it lives in its own virtual environment and never in
actstore's dependencies. This script imports neither actstore nor anything of this repository. It writes the rows
the way ``CacheActivationsRunner`` does (one ``datasets.Dataset`` of ``Array2D`` sequences per buffer, saved to
disk, then SAELens's own ``_consolidate_shards``), reads them back through SAELens's ``ActivationsStore`` with a
32,768-row mixing buffer, and times one random row through ``datasets.load_from_disk``. Arrow has no bfloat16,
so the cache holds float32 (bit-exact: every bf16 value is a float32). Prints one JSON line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

CONTEXT = 128
"""Tokens per Arrow row (one sequence); a 4096-row batch is 32 sequences."""
BATCH = 4096
HOOK = "blocks.0.hook_resid_post"


def _bytes_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    import datasets
    from datasets import Array2D, Dataset, Features
    from sae_lens.cache_activations_runner import CacheActivationsRunner
    from sae_lens.training.activations_store import ActivationsStore

    datasets.disable_progress_bars()
    warnings.simplefilter("ignore")
    npy, work, seed, n_lat = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    check = "--check" in sys.argv
    u16_ND = np.load(npy)
    n, d = u16_ND.shape
    shutil.rmtree(work, ignore_errors=True)
    tmp, final = work / "cache" / ".tmp_shards", work / "cache"
    tmp.mkdir(parents=True)
    features = Features({HOOK: Array2D(shape=(CONTEXT, d), dtype="float32")})
    batches = [torch.from_numpy(u16_ND[s : s + BATCH].copy()).view(torch.bfloat16) for s in range(0, n, BATCH)]

    os.sync()
    t0 = time.perf_counter()
    for i, acts in enumerate(batches):  # CacheActivationsRunner.run: one shard per buffer, then consolidate
        shard = Dataset.from_dict({HOOK: acts.float().reshape(-1, CONTEXT, d)}, features=features)
        shard.save_to_disk(str(tmp / f"shard_{i:05d}"), num_shards=1)
    CacheActivationsRunner._consolidate_shards(tmp, final, copy_files=False)
    write_s = time.perf_counter() - t0
    shutil.rmtree(tmp, ignore_errors=True)

    store = ActivationsStore(
        model=None, dataset=None, streaming=False, hook_name=HOOK, hook_head_index=None, context_size=CONTEXT,
        d_in=d, n_batches_in_buffer=min(256, n // CONTEXT), total_training_tokens=n,
        store_batch_size_prompts=BATCH // CONTEXT, train_batch_size_tokens=BATCH, prepend_bos=False,
        normalize_activations="none", device=torch.device("cpu"), dtype="float32", cached_activations_path=str(final),
    )
    torch.manual_seed(seed)
    got, rows_ok = 0, True
    known = {hashlib.blake2b(r.tobytes(), digest_size=8).digest() for r in u16_ND} if check else set()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n // BATCH):
        x = store.next_batch()
        got += x.shape[0]
        if check:
            bits = x.to(torch.bfloat16).view(torch.uint16).numpy()
            rows_ok &= bool(np.array_equal(x.numpy(), torch.from_numpy(bits).view(torch.bfloat16).float().numpy()))
            rows_ok &= all(hashlib.blake2b(r.tobytes(), digest_size=8).digest() in known for r in bits)
    load_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0

    ds = datasets.load_from_disk(str(final))
    ds.set_format(type="torch", columns=[HOOK])
    idx = np.random.default_rng(seed).integers(0, n, size=n_lat + 5)
    lat, exact = [], True
    for j, i in enumerate(idx):
        t = time.perf_counter()
        row = ds[int(i) // CONTEXT][HOOK][int(i) % CONTEXT]
        if j >= 5:
            lat.append(time.perf_counter() - t)
        if check:
            exact &= bool(np.array_equal(row.to(torch.bfloat16).view(torch.uint16).numpy(), u16_ND[i]))
    res = {"write_s": write_s, "bytes": _bytes_on_disk(final), "rows_per_s": got / load_s,
           "cpu_s_per_M_rows": cpu_s / got * 1e6, "rows_loaded": got, "row_p50_ms": statistics.median(lat) * 1e3}
    if check:  # a mixing buffer keeps part of each fill for later batches: rows are real, not each exactly once
        res.update(every_row_once=False, rows_are_source_rows=rows_ok, row_exact=exact)
    import importlib.metadata as md

    res["versions"] = {p: md.version(p) for p in ("sae-lens", "datasets", "pyarrow", "torch")}
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
