"""ActLoader / ActDataset: exact order, every row once, filters, layers, metadata, dtypes, resume, workers."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import actstore
from actstore import ActDataset, ActStore, LoaderConfig
from actstore._errors import ConfigError


def make_store(path: Path, n: int = 1000, layers: tuple[int, ...] = (3, 5), d: int = 8,
               dtype: torch.dtype = torch.float32, **cfg: object) -> ActStore:
    """Rows r of layer L hold [r, L, noise...]; sample = r // 7, step = r % 4, position = r % 7."""
    cfg.setdefault("chunk_rows", 64)
    cfg.setdefault("block_rows", 16)
    g = torch.Generator().manual_seed(0)
    r = np.arange(n)
    with actstore.create(path, **cfg) as w:
        for s in range(0, n, 300):  # several appends, chunks straddle them
            sl = slice(s, min(n, s + 300))
            acts = {}
            for layer in layers:
                x = torch.randn(sl.stop - sl.start, d, generator=g)
                x[:, 0] = torch.from_numpy(r[sl]).float()
                x[:, 1] = layer
                acts[layer] = x.to(dtype)
            w.append("decision", rows={"sample": r[sl] // 7, "step": r[sl] % 4, "position": r[sl] % 7}, acts=acts)
    return ActStore.open(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ActStore:
    return make_store(tmp_path_factory.mktemp("ld") / "s.zarr")


def ids(batches: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([b[:, 0] for b in batches]).long().numpy()


def collect(loader: object) -> list[torch.Tensor]:
    out = []
    for b in loader:  # type: ignore[attr-defined]
        out.append(b.clone())
    return out


def test_unshuffled_is_the_stored_order(store: ActStore) -> None:
    view = store[3, "decision"]
    for bs, drop in ((100, False), (64, False), (77, True), (2000, False)):
        ld = store.loader(3, "decision", batch_size=bs, shuffle=False, drop_last=drop)
        got = collect(ld)
        assert len(got) == len(ld)
        full = torch.cat(got)
        n = (1000 // bs) * bs if drop else 1000
        assert torch.equal(full, view[:n])
        assert all(b.shape[0] == bs for b in got[:-1])


def test_shuffled_epoch_is_a_permutation_and_epochs_differ(store: ActStore) -> None:
    ld = store.loader(3, "decision", batch_size=64, seed=5)
    e0, e1 = ids(collect(ld)), ids(collect(ld))
    assert ld.epoch == 2
    assert sorted(e0.tolist()) == list(range(1000)) == sorted(e1.tolist())
    assert not np.array_equal(e0, e1) and not np.array_equal(e0, np.arange(1000))
    again = store.loader(3, "decision", batch_size=64, seed=5)
    assert np.array_equal(ids(collect(again)), e0)
    # the rows are intact, not just the ids
    b = collect(store.loader(3, "decision", batch_size=64, seed=5))[0]
    assert torch.equal(b, store[3, "decision"][b[:, 0].long().numpy()])


def test_multi_layer_same_rows_and_metadata(store: ActStore) -> None:
    ld = store.loader([5, 3], "decision", batch_size=50, with_rows=True, reuse_buffers=False)
    seen = []
    for acts, rows in ld:
        assert list(acts) == [5, 3]
        assert torch.equal(acts[5][:, 0], acts[3][:, 0]) and bool((acts[5][:, 1] == 5).all())
        r = acts[3][:, 0].long()
        assert torch.equal(rows["sample"], r // 7) and torch.equal(rows["step"], r % 4)
        assert torch.equal(rows["position"], r % 7)
        seen.append(r)
    assert sorted(torch.cat(seen).tolist()) == list(range(1000))


def test_filters(store: ActStore) -> None:
    r = np.arange(1000)
    cases = [({"step": [1, 2]}, r[(r % 4 == 1) | (r % 4 == 2)]), ({"sample": range(10, 40)}, r[(r // 7 >= 10) & (r // 7 < 40)]),
             ({"where": lambda t: t["position"] < 2, "step": 0}, r[(r % 7 < 2) & (r % 4 == 0)])]
    for kw, want in cases:
        got = ids(collect(store.loader(3, "decision", batch_size=32, shuffle=False, **kw)))
        assert np.array_equal(got, want)
        got = ids(collect(store.loader(3, "decision", batch_size=32, seed=1, **kw)))
        assert sorted(got.tolist()) == want.tolist()


def test_dtypes(tmp_path: Path) -> None:
    s = make_store(tmp_path / "bf.zarr", n=300, layers=(1,), d=16, dtype=torch.bfloat16)
    ref = s[1, "decision"][:]
    for dtype in (None, "bfloat16", "float32"):
        b = collect(s.loader(1, "decision", batch_size=128, shuffle=False, dtype=dtype))
        full = torch.cat(b)
        assert full.dtype == (torch.bfloat16 if dtype in (None, "bfloat16") else torch.float32)
        assert torch.equal(full.float(), ref.float())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(0, 16), batch=st.sampled_from([16, 50, 64]), chunks=st.integers(1, 4), seed=st.integers(0, 9))
def test_resume_mid_epoch_is_exact(store: ActStore, k: int, batch: int, chunks: int, seed: int) -> None:
    opts = {"batch_size": batch, "shuffle_chunks": chunks, "seed": seed, "with_rows": True}
    ref = store.loader(3, "decision", **opts)
    straight = [b[1]["sample"] for b in ref] + [b[1]["sample"] for b in ref]  # two epochs
    k = min(k, len(straight))
    first = store.loader(3, "decision", **opts)
    got = []
    it = iter(first)
    for _ in range(k):
        got.append(next(it)[1]["sample"])
        if first.batch == len(first):  # finish the epoch so the state moves to the next one
            assert next(it, None) is None
            it = iter(first)
    state = first.state_dict()
    it.close()
    second = store.loader(3, "decision", **opts)
    second.load_state_dict(state)
    while len(got) < len(straight):
        got += [b[1]["sample"] for b in second]
    assert all(torch.equal(a, b) for a, b in zip(got, straight, strict=True))


def test_ranks_split_rows_with_equal_batch_counts(store: ActStore) -> None:
    for drop in (False, True):
        per = [store.loader(3, "decision", batch_size=64, rank=r, world_size=3, drop_last=drop, seed=2) for r in range(3)]
        got = [ids(collect(ld)) for ld in per]
        assert len({len(ld) for ld in per}) == 1 and all(len(collect(ld)) == len(per[0]) for ld in per[:1])
        allr = np.concatenate(got)
        if drop:  # 1000 = 3 * 333 + 1: one row left out, then each rank's short batch (333 = 5 * 64 + 13)
            assert allr.size == 3 * 5 * 64 and np.unique(allr).size == allr.size
        else:  # padded to 3 * 334: two rows seen twice
            assert allr.size == 1002 and np.unique(allr).size == 1000


def test_dataloader_workers_no_duplicates_and_resume(store: ActStore) -> None:
    ds = ActDataset(store, 3, "decision", batch_size=32, seed=3)
    dl = DataLoader(ds, batch_size=None, num_workers=2)
    full = [b.clone() for b in dl]
    assert len(full) == len(ds) and sorted(ids(full).tolist()) == list(range(1000))
    state = ds.state_dict(7)
    ds2 = ActDataset(store, 3, "decision", batch_size=32, seed=3)
    ds2.load_state_dict(state)
    rest = [b.clone() for b in DataLoader(ds2, batch_size=None, num_workers=2)]
    assert np.array_equal(ids(full[7:]), ids(rest))
    ds.set_epoch(1)
    assert not np.array_equal(ids([b.clone() for b in dl]), ids(full))


def test_bad_options_name_the_value(store: ActStore) -> None:
    with pytest.raises(ConfigError, match="unknown loader option 'batchsize'"):
        store.loader(3, "decision", batchsize=3)
    with pytest.raises(ConfigError, match="dtype 'int8'"):
        LoaderConfig(dtype="int8")
    with pytest.raises(ConfigError, match="rank"):
        LoaderConfig(rank=2, world_size=2)
    with pytest.raises(actstore.UnknownKeyError, match="layers are"):
        store.loader(99, "decision")
    ld = store.loader(3, "decision", batch_size=64)
    with pytest.raises(ConfigError, match="batch_size=32"):
        store.loader(3, "decision", batch_size=32).load_state_dict(ld.state_dict())


def test_producer_errors_reach_the_consumer(store: ActStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from actstore.read._blocks import ArrayReader

    def boom(*a: object) -> None:
        raise actstore.CorruptStoreError("bad chunk")

    monkeypatch.setattr(ArrayReader, "read_chunk_rows", boom)
    with pytest.raises(actstore.CorruptStoreError, match="bad chunk"):
        collect(store.loader(3, "decision", batch_size=64))


@pytest.mark.gpu
def test_pinned_device_batches(store: ActStore) -> None:
    ld = store.loader(3, "decision", batch_size=64, shuffle=False, pin_memory=True, device="cuda")
    got = torch.cat([b.cpu() for b in ld])
    assert torch.equal(got, store[3, "decision"][:])


def _loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "actstore-loader" and t.is_alive()]


def test_kept_batches_never_change_by_default(store: ActStore) -> None:
    """``list(loader)`` keeps every batch intact (the default copies); the zero-copy ring is an opt-in."""
    assert LoaderConfig().reuse_buffers is False
    truth = store[3, "decision"][:]
    kept = list(store.loader(3, "decision", batch_size=64, shuffle=False))
    assert torch.equal(torch.cat(kept), truth)
    ring = list(store.loader(3, "decision", batch_size=64, shuffle=False, reuse_buffers=True, prefetch=1))
    assert not torch.equal(torch.cat(ring), truth)  # what the opt-in documents: kept batches were overwritten
    got = torch.cat([b.clone() for b in store.loader(3, "decision", batch_size=64, shuffle=False, reuse_buffers=True)])
    assert torch.equal(got, truth)


def test_close_and_garbage_collection_stop_the_thread(tmp_path: Path) -> None:
    store = make_store(tmp_path / "c.zarr", n=2000)
    before = len(_loader_threads())
    ld = store.loader(3, "decision", batch_size=8, prefetch=50)
    it = iter(ld)
    next(it)
    assert len(_loader_threads()) == before + 1
    ld.close()
    assert len(_loader_threads()) == before
    with pytest.raises(actstore.StoreClosedError, match="closed"):
        next(it)
    with pytest.raises(actstore.StoreClosedError):
        iter(ld)
    it2 = iter(store.loader(3, "decision", batch_size=8, prefetch=50))
    next(it2)
    assert len(_loader_threads()) == before + 1
    del it2
    gc.collect()
    assert len(_loader_threads()) == before
    with store.loader(3, "decision", batch_size=8, prefetch=50) as ld3:
        next(iter(ld3))
    assert len(_loader_threads()) == before
    it4 = iter(store.loader(3, "decision", batch_size=8, prefetch=50))
    next(it4)
    store.close()  # closes the store's loaders too
    assert len(_loader_threads()) == before
    with pytest.raises(actstore.StoreClosedError):
        next(it4)


_EXIT_SCRIPT = """
import sys
import actstore
store = actstore.open(sys.argv[1])
{body}
print("ok", flush=True)
"""

_EXIT_BODIES = [
    # an iterator left alive at top level, its thread busy filling a deep queue when the script ends
    "it = iter(store.loader(3, 'decision', batch_size=2, prefetch=100_000))\nbatch = next(it)",
    "batch = next(iter(store.loader(3, 'decision', batch_size=2, prefetch=100_000)))",
    "it = iter(store.loader([3, 5], 'decision', batch_size=2, prefetch=100_000, reuse_buffers=True))\nnext(it)",
]


@pytest.mark.slow
def test_exit_with_a_live_iterator_is_clean(tmp_path: Path) -> None:
    """Interpreter exit while a loader thread works: no 'terminate called without an active exception' (134)."""
    path = tmp_path / "x.zarr"
    make_store(path, n=6000, d=64).close()
    procs = []  # 3 runs of each body, all started at once (each is an interpreter start, mostly waiting on imports)
    for k, body in enumerate(_EXIT_BODIES):
        script = tmp_path / f"quick{k}.py"
        script.write_text(_EXIT_SCRIPT.format(body=body))
        procs += [(body, subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)) for _ in range(3)]
    for body, proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0 and "terminate" not in err, (body, proc.returncode, err[-2000:])
        assert out.strip() == "ok"


def test_batch_memory_is_recycled_only_once_nothing_refers_to_it(store: ActStore) -> None:
    """Default batches reuse the memory of batches the caller let go of, never of one still referred to: a view,
    a numpy array or a slice kept from a batch keeps its values while many more batches go by."""
    truth = store[3, "decision"][:]
    loader = store.loader(3, "decision", batch_size=64, shuffle=False)
    kept_view, kept_np, kept_slice, seen = None, None, None, set()
    for k, batch in enumerate(loader):
        seen.add(batch.untyped_storage().data_ptr())
        if k == 1:
            kept_view = batch.view(torch.int16)
        elif k == 2:
            kept_np = batch.float().numpy()  # a copy: the batch itself is dropped
            kept_raw = batch.view(torch.int16).numpy()
        elif k == 3:
            kept_slice = batch[5:9]
        del batch
    assert kept_view is not None and kept_slice is not None and kept_np is not None
    assert torch.equal(kept_view, truth[64:128].view(torch.int16))
    assert np.array_equal(kept_raw, truth[128:192].view(torch.int16).numpy())
    assert torch.equal(kept_slice, truth[197:201])
    assert len(seen) < -(-truth.shape[0] // 64)  # memory of dropped batches was handed out again


def test_later_epochs_reuse_the_memory_of_earlier_ones(store: ActStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loader keeps its recycled batch memory across epochs: a later epoch allocates (almost) no batch memory,
    where the first allocates a few batches' worth (the batches in flight: queued, being made, being used)."""
    from actstore.train import _pipeline

    made: list[int] = []
    real_new = _pipeline._LayerOutput._new
    monkeypatch.setattr(_pipeline._LayerOutput, "_new", lambda self: (made.append(1), real_new(self))[1])
    loader = store.loader(3, "decision", batch_size=32)
    per_epoch = []
    for _ in range(3):
        before = len(made)
        n = 0
        for batch in loader:
            n += 1
            del batch
        per_epoch.append(len(made) - before)
    assert n > 3 * (LoaderConfig().prefetch + 4)  # enough batches that fresh memory for each would show
    assert per_epoch[0] <= LoaderConfig().prefetch + 4 and sum(per_epoch[1:]) <= 1, per_epoch


def test_two_iterations_of_one_loader_at_once_stay_right(store: ActStore) -> None:
    """Two iterations of the same loader running at once, one several buffers ahead of the other: each yields every
    row of its epoch at most once, each row right (the second iteration gets its own decode buffers and batch
    memory instead of decoding into the ones the first is gathering from)."""
    truth = store[3, "decision"][:]
    loader = store.loader(3, "decision", batch_size=16, seed=5, shuffle_chunks=1)
    first, got = iter(loader), {"first": [], "second": []}
    got["first"] = [next(first) for _ in range(9)]
    for y in iter(loader):  # the second skips the batches the first has yielded (the loader's resume position)
        got["first"].append(next(first))
        got["second"].append(y)
    got["first"] += list(first)
    for name, batches in got.items():
        rows = torch.cat(batches)
        ids = rows[:, 0].long()
        assert torch.equal(rows, truth[ids]) and ids.unique().numel() == ids.numel(), name  # column 0: row number
    assert sorted(torch.cat(got["first"])[:, 0].long().tolist()) == list(range(truth.shape[0]))
