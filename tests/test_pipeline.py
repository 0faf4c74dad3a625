"""The loader pipeline on in-memory readers: batches follow the epoch plan exactly (numpy as the reference),
resume skips, multi-layer / with_rows / dtype packing, the reused slot ring, errors and shutdown."""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from actstore.read._rowindex import Selection
from actstore.train._loader_config import LoaderConfig
from actstore.train._pipeline import Inputs, Work, _DoubleBuffer, _SlotRing, batches
from actstore.train._shuffle import EpochPlan, plan_epoch

CHUNK = 16


@dataclass
class NumpyReader:
    """A chunked array held in memory: the :class:`~actstore.train._pipeline.ChunkReader` protocol over numpy."""

    data: np.ndarray
    chunk_rows: int = CHUNK
    fail_chunk: int | None = None
    delay: float = 0.0
    decoded: list[int] = field(default_factory=list)

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def chunk_index(self, rows: np.ndarray) -> np.ndarray:
        return rows // self.chunk_rows

    def read_chunk_rows(self, chunk: int, ids: np.ndarray, out: np.ndarray) -> None:
        time.sleep(self.delay)
        if chunk == self.fail_chunk:
            raise OSError(f"chunk {chunk} is unreadable")
        assert np.all(ids // self.chunk_rows == chunk)
        out[:] = self.data[ids]
        self.decoded.append(chunk)


def make_plan(n: int, batch_size: int, shuffle: bool = True, seed: int = 3) -> EpochPlan:
    bounds = np.r_[np.arange(0, n, CHUNK), n].astype(np.int64)
    cfg = LoaderConfig(batch_size=batch_size, shuffle_chunks=2, shuffle=shuffle, seed=seed)
    return plan_epoch(Selection.all(bounds), cfg, chunk_rows=CHUNK, epoch=1, rank=0, world_size=1)


def expected_batches(plan: EpochPlan, buffer_ids: tuple[int, ...]) -> list[np.ndarray]:
    """Row ids of each batch, straight from the plan."""
    out = []
    for i in buffer_ids:
        rows = plan.buffer(i)[plan.order(i)]
        out += [rows[k : k + plan.batch_size] for k in range(0, rows.size, plan.batch_size)]
    return out


def layer_data(n: int, d: int, layer: int) -> np.ndarray:
    x = np.random.default_rng(layer).standard_normal((n, d)).astype(np.float32)
    x[:, 0] = np.arange(n)
    return x


def bf16_bits(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "actstore-loader" and t.is_alive()]


def test_batches_follow_the_plan_and_resume_skips() -> None:
    n, d = 200, 6
    data = layer_data(n, d, 0)
    plan = make_plan(n, batch_size=12)
    assert plan.n_buffers > 2
    inputs = Inputs(layers=(0,), readers=(NumpyReader(data),), dtype_names=("float32",), multi=False)
    cfg = LoaderConfig(batch_size=12, prefetch=1)
    all_ids = tuple(range(plan.n_buffers))
    want = expected_batches(plan, all_ids)
    got = [b.numpy().copy() for b in batches(inputs, cfg, Work(plan, all_ids))]
    assert len(got) == len(want) == len(plan)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, data[w])
    for skip in (1, plan.buffer_batches(0), plan.buffer_batches(0) + 1, len(plan) - 1, len(plan)):
        rest = [b.numpy().copy() for b in batches(inputs, cfg, Work(plan, all_ids, skip=skip))]
        assert len(rest) == len(want) - skip
        for g, w in zip(rest, want[skip:], strict=True):
            np.testing.assert_array_equal(g, data[w])
    odd = all_ids[1::2]  # a worker's share of the buffers
    for g, w in zip(batches(inputs, cfg, Work(plan, odd)), expected_batches(plan, odd), strict=True):
        np.testing.assert_array_equal(g.numpy(), data[w])


def test_work_remaining_drops_whole_skipped_buffers() -> None:
    plan = make_plan(200, batch_size=12)
    counts = [plan.buffer_batches(i) for i in range(plan.n_buffers)]
    ids = tuple(range(plan.n_buffers))
    assert Work(plan, ids, skip=0).remaining() == Work(plan, ids, skip=0)
    rest = Work(plan, ids, skip=counts[0] + 1).remaining()
    assert rest.buffer_ids == ids[1:] and rest.skip == 1
    assert Work(plan, ids, skip=sum(counts)).remaining().buffer_ids == ()


def test_multi_layer_rows_and_dtype_conversion() -> None:
    n, d, b = 150, 4, 10
    a, c = layer_data(n, d, 1), layer_data(n, d, 2)
    table = np.stack([np.arange(n) // 7, np.arange(n) % 4], axis=1).astype(np.int64)
    inputs = Inputs(layers=(1, "x"), readers=(NumpyReader(bf16_bits(a)), NumpyReader(c)),
                    dtype_names=("bfloat16", "float32"), multi=True, row_reader=NumpyReader(table),
                    columns=("sample", "step"))
    plan = make_plan(n, batch_size=b)
    ids = tuple(range(plan.n_buffers))
    cfg = LoaderConfig(batch_size=b, dtype="float32", prefetch=2)
    got = list(batches(inputs, cfg, Work(plan, ids)))
    want = expected_batches(plan, ids)
    assert len(got) == len(want)
    a_bf16 = torch.from_numpy(a).to(torch.bfloat16).float().numpy()
    for (acts, rows), w in zip(got, want, strict=True):
        assert set(acts) == {1, "x"} and all(t.dtype == torch.float32 for t in acts.values())
        np.testing.assert_array_equal(acts[1].numpy(), a_bf16[w])
        np.testing.assert_array_equal(acts["x"].numpy(), c[w])
        np.testing.assert_array_equal(rows["sample"].numpy(), table[w, 0])
        np.testing.assert_array_equal(rows["step"].numpy(), table[w, 1])


def test_bf16_stays_bf16_bit_exact() -> None:
    n, d = 64, 5
    bits = bf16_bits(layer_data(n, d, 4))
    inputs = Inputs(layers=(4,), readers=(NumpyReader(bits),), dtype_names=("bfloat16",), multi=False)
    plan = make_plan(n, batch_size=8, shuffle=False)
    got = torch.cat(list(batches(inputs, LoaderConfig(batch_size=8), Work(plan, tuple(range(plan.n_buffers))))))
    assert got.dtype == torch.bfloat16
    np.testing.assert_array_equal(got.view(torch.int16).numpy().view(np.uint16), bits)


def test_reuse_ring_recycles_prefetch_plus_three_slots_and_fresh_by_default() -> None:
    n, d, b, prefetch = 160, 3, 8, 1
    data = layer_data(n, d, 0)
    inputs = Inputs(layers=(0,), readers=(NumpyReader(data),), dtype_names=("float32",), multi=False)
    plan = make_plan(n, batch_size=b, shuffle=False)
    ids = tuple(range(plan.n_buffers))
    cfg = LoaderConfig(batch_size=b, prefetch=prefetch)
    ptrs = [t.data_ptr() for t in batches(inputs, cfg, Work(plan, ids, reuse=True))]
    ring = prefetch + 3
    assert len(set(ptrs)) == ring
    assert all(ptrs[k] == ptrs[k % ring] for k in range(len(ptrs)))
    kept = list(batches(inputs, cfg, Work(plan, ids)))
    assert len({t.data_ptr() for t in kept}) == len(kept)
    np.testing.assert_array_equal(torch.cat(kept).numpy(), data)


def test_slot_ring_waits_for_the_copy_that_last_read_a_slot() -> None:
    class Event:
        def __init__(self) -> None:
            self.waited = 0

        def synchronize(self) -> None:
            self.waited += 1

    assert _SlotRing(0).take() is None
    ring = _SlotRing(3)
    events = [Event() for _ in range(3)]
    for k in range(3):
        slot = ring.take()
        assert slot == k
        ring.record(slot, events[k])
    assert [e.waited for e in events] == [0, 0, 0]
    assert ring.take() == 0 and [e.waited for e in events] == [1, 0, 0]
    assert ring.take() == 1 and [e.waited for e in events] == [1, 1, 0]
    ring.record(1, None)
    assert ring.take() == 2 and ring.take() == 0 and [e.waited for e in events] == [1, 1, 1]


def test_decode_error_reaches_the_consumer_and_the_thread_ends() -> None:
    n = 160
    before = len(loader_threads())
    plan = make_plan(n, batch_size=8, shuffle=False)
    ids = tuple(range(plan.n_buffers))
    bad_chunk = int(plan.buffer(ids[-1])[0]) // CHUNK  # in the last buffer: some batches come out first
    reader = NumpyReader(layer_data(n, 3, 0), fail_chunk=bad_chunk)
    inputs = Inputs(layers=(0,), readers=(reader,), dtype_names=("float32",), multi=False)
    got = []
    with pytest.raises(OSError, match=f"chunk {bad_chunk} is unreadable"):
        for batch in batches(inputs, LoaderConfig(batch_size=8), Work(plan, ids)):
            got.append(batch)
    assert 0 < len(got) < len(plan)
    assert len(loader_threads()) == before


def test_abandon_waits_for_running_decode_jobs() -> None:
    data = layer_data(96, 3, 0)
    reader = NumpyReader(data, delay=0.05)
    sets = [[np.zeros((96, 3), np.float32)] for _ in range(2)]
    decode = _DoubleBuffer([reader], sets)
    decode.start(0, np.arange(96))
    decode.abandon()  # cancelled jobs never write, started ones have finished
    written = {r // CHUNK for r in np.flatnonzero(sets[0][0][:, 0] != 0)}
    assert written <= set(reader.decoded)
    snapshot = sets[0][0].copy()
    time.sleep(0.2)
    np.testing.assert_array_equal(sets[0][0], snapshot)


def test_close_and_garbage_collection_join_the_thread() -> None:
    n = 400
    inputs = Inputs(layers=(0,), readers=(NumpyReader(layer_data(n, 3, 0)),), dtype_names=("float32",), multi=False)
    plan = make_plan(n, batch_size=2)
    work = Work(plan, tuple(range(plan.n_buffers)))
    before = len(loader_threads())
    it = batches(inputs, LoaderConfig(batch_size=2, prefetch=50), work)
    assert len(loader_threads()) == before  # nothing starts before the first next
    next(it)
    assert len(loader_threads()) == before + 1
    it.close()
    assert len(loader_threads()) == before
    it2 = batches(inputs, LoaderConfig(batch_size=2, prefetch=50), work)
    next(it2)
    del it2
    gc.collect()
    assert len(loader_threads()) == before


@pytest.mark.gpu
def test_device_batches_are_right_while_the_host_ring_turns() -> None:
    """Device copies read host ring slots asynchronously: with a 4-slot ring and many small batches, a slot
    overwritten before its copy finished would show up as a wrong batch."""
    n, d, b = 2048, 64, 4
    a, c = layer_data(n, d, 1), layer_data(n, d, 2)
    inputs = Inputs(layers=(1, 2), readers=(NumpyReader(bf16_bits(a)), NumpyReader(c)),
                    dtype_names=("bfloat16", "float32"), multi=True)
    plan = make_plan(n, batch_size=b)
    ids = tuple(range(plan.n_buffers))
    cfg = LoaderConfig(batch_size=b, prefetch=1, pin_memory=True, device="cuda")
    got = [{k: t.cpu() for k, t in batch.items()} for batch in batches(inputs, cfg, Work(plan, ids))]
    a_bf16 = torch.from_numpy(a).to(torch.bfloat16)
    for batch, w in zip(got, expected_batches(plan, ids), strict=True):
        assert torch.equal(batch[1], a_bf16[torch.from_numpy(w)])
        np.testing.assert_array_equal(batch[2].numpy(), c[w])
