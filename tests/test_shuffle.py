"""The shuffling plan (pure numpy) and the measured shuffle quality of real epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import actstore
from actstore.read._rowindex import Selection
from actstore.train._loader_config import LoaderConfig
from actstore.train._shuffle import plan_epoch, resume_split


def selection(rows: np.ndarray, n: int, cr: int) -> Selection:
    """The selection of ``rows`` (ascending) of a role of ``n`` rows stored in chunks of ``cr`` rows."""
    bounds = np.r_[np.arange(0, n, cr), n].astype(np.int64)
    return Selection.from_ids(bounds, rows)


def plans(rows: np.ndarray, world: int, n: int | None = None, **kw: object) -> list:
    n = int(rows.max(initial=-1)) + 1 if n is None else n
    sel = selection(rows, n, kw["chunk_rows"])  # type: ignore[arg-type]
    cfg = LoaderConfig(batch_size=kw["batch_size"], shuffle_chunks=kw["shuffle_chunks"], shuffle=kw["shuffle"],  # type: ignore[arg-type]
                       seed=kw["seed"], drop_last=kw["drop_last"])  # type: ignore[arg-type]
    return [plan_epoch(sel, cfg, chunk_rows=kw["chunk_rows"], epoch=kw["epoch"], rank=r, world_size=world)  # type: ignore[arg-type]
            for r in range(world)]


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 700), keep=st.floats(0.2, 1.0), cr=st.sampled_from([16, 64]), bs=st.integers(1, 90),
       k=st.integers(1, 5), world=st.integers(1, 4), workers=st.integers(1, 3), seed=st.integers(0, 50),
       epoch=st.integers(0, 3), drop=st.booleans(), shuffle=st.booleans())
def test_every_row_once_across_ranks_workers(n: int, keep: float, cr: int, bs: int, k: int, world: int, workers: int,
                                             seed: int, epoch: int, drop: bool, shuffle: bool) -> None:
    rows = np.flatnonzero(np.random.default_rng(seed).random(n) < keep)
    kw = {"chunk_rows": cr, "batch_size": bs, "shuffle_chunks": k, "shuffle": shuffle, "seed": seed,
          "epoch": epoch, "drop_last": drop}
    ps = plans(rows, world, n, **kw)
    counts = [len(p) for p in ps]
    assert len(set(counts)) == 1  # equal batch counts per rank
    seen = []
    for p in ps:
        assert p.buffer_rows % bs == 0
        per_worker = []
        for w in range(workers):  # workers split the buffers
            got = [p.buffer(i)[p.order(i)] for i in range(w, p.n_buffers, workers)]
            per_worker.append(np.concatenate(got) if got else np.zeros(0, np.int64))
        mine = np.concatenate(per_worker)
        assert mine.size == (counts[0] * bs if drop else p.rows.size)
        seen.append(mine)
    allr = np.concatenate(seen)
    if world == 1 and not drop:
        assert np.array_equal(np.sort(allr), rows)  # every row exactly once
    else:
        assert np.unique(allr).size == allr.size or (not drop and allr.size > rows.size)
        assert np.isin(allr, rows).all()
        assert rows.size - allr.size < world + bs * world if drop else allr.size - rows.size < world
    if not shuffle and world == 1 and p.n_buffers:
        assert np.array_equal(np.concatenate([p.buffer(i)[p.order(i)] for i in range(p.n_buffers)]),
                              rows[: allr.size])
    # deterministic
    again = plans(rows, world, n, **kw)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(ps, again, strict=True))


@given(n=st.integers(1, 500), cr=st.sampled_from([8, 32]), seed=st.integers(0, 20))
def test_stream_keeps_chunks_whole(n: int, cr: int, seed: int) -> None:
    rows = np.arange(n) * 3
    s = plans(rows, 1, chunk_rows=cr, batch_size=5, shuffle_chunks=2, shuffle=True, seed=seed, epoch=0,
              drop_last=False)[0].rows
    assert np.array_equal(np.sort(s), rows)
    c = s // cr
    changes = np.flatnonzero(c[1:] != c[:-1])
    assert np.unique(c).size == changes.size + 1  # each chunk is one contiguous run, ascending inside
    assert all(np.all(np.diff(s[c == x]) > 0) for x in np.unique(c))


def round_robin(per_worker: list[list[int]]) -> list[int]:
    """What torch's DataLoader does with an IterableDataset: one item from each live worker in turn."""
    its = [iter(x) for x in per_worker]
    live = list(range(len(its)))
    out = []
    while live:
        for w in list(live):
            try:
                out.append(next(its[w]))
            except StopIteration:
                live.remove(w)
    return out


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(0, 4), min_size=0, max_size=9), workers=st.integers(1, 4), data=st.data())
def test_resume_split_continues_the_round_robin(counts: list[int], workers: int, data: st.DataObject) -> None:
    # label each batch (buffer, k); worker w owns buffers w, w + W, ...
    own = [[(i, k) for i in range(w, len(counts), workers) for k in range(counts[i])] for w in range(workers)]
    full = round_robin(own)
    consumed = data.draw(st.integers(0, len(full)))
    skip, roles = resume_split(np.array(counts, dtype=np.int64), workers, consumed)
    restarted = [own[roles[p]][skip[roles[p]]:] if p < len(roles) else [] for p in range(workers)]
    assert full[:consumed] + round_robin(restarted) == full


# ------------------------------------------------------------------------------------- shuffle quality
def pair_fraction(labels_BN: np.ndarray) -> float:
    """Mean over batches of the fraction of row pairs in a batch that share a label."""
    fr = []
    for lab in labels_BN:
        _, c = np.unique(lab, return_counts=True)
        b = lab.size
        fr.append((c * (c - 1)).sum() / (b * (b - 1)))
    return float(np.mean(fr))


def test_shuffle_quality_against_a_uniform_permutation(tmp_path: Path) -> None:
    n, bs, seq = 4096, 64, 16  # a sample = 16 consecutive rows, 4 steps of 4 rows each
    r = np.arange(n)
    sample, step = r // seq, (r // 4) % 4
    with actstore.create(tmp_path / "q.zarr", chunk_rows=64, block_rows=16) as w:
        w.append("decision", rows={"sample": sample, "step": step, "position": r % 4},
                 acts={0: torch.zeros(n, 2)})
    store = actstore.ActStore.open(tmp_path / "q.zarr")
    rng = np.random.default_rng(0)

    def reference(labels: np.ndarray, sims: int = 60) -> tuple[float, float]:
        vals = [pair_fraction(rng.permutation(labels)[: n // bs * bs].reshape(-1, bs)) for _ in range(sims)]
        return float(np.mean(vals)), float(np.std(vals))

    def measured(epochs: int, **kw: object) -> tuple[float, float]:
        ld = store.loader(0, "decision", batch_size=bs, with_rows=True, drop_last=True, **kw)
        s_fr, t_fr = [], []
        for _ in range(epochs):
            batches = [rows for _, rows in ld]
            s_fr.append(pair_fraction(np.stack([b["sample"].numpy() for b in batches])))
            t_fr.append(pair_fraction(np.stack([b["step"].numpy() for b in batches])))
        return float(np.mean(s_fr)), float(np.mean(t_fr))

    ref_s, sd_s = reference(sample)
    ref_t, sd_t = reference(step)
    # a buffer holding the whole store: batches are a uniform permutation. 4 epochs averaged, so the sampling
    # error is sd / 2; 4 sd / 2 = 2 sd leaves a false-failure rate well under 1e-4.
    got_s, got_t = measured(4, shuffle_chunks=n // 64)
    assert abs(got_s - ref_s) < 2 * sd_s + 1e-12, (got_s, ref_s, sd_s)
    assert abs(got_t - ref_t) < 2 * sd_t + 1e-12, (got_t, ref_t, sd_t)
    # the default buffer (8 chunks = 512 rows = 32 samples): steps still mix uniformly, and the same-sample
    # fraction matches uniform shuffling *within a buffer*: (seq - 1) / (512 - 1), 8x the global value here
    got_s, got_t = measured(4)
    assert abs(got_t - ref_t) < 2 * sd_t + 1e-12
    within = (seq - 1) / (8 * 64 - 1)
    assert abs(got_s - within) < 0.15 * within, (got_s, within, ref_s)
    # unshuffled order is exact
    ld = store.loader(0, "decision", batch_size=bs, with_rows=True, shuffle=False)
    assert np.array_equal(np.concatenate([rows["sample"].numpy() for _, rows in ld]), sample)
