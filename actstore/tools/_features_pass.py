"""The feature pass: stream one (layer, role) of a store through an SAE and keep per-feature statistics.

:func:`feature_pass` reads the rows in store order (a reader thread reads and decodes two batches ahead while a
compute thread encodes this one, on the GPU when there is one), and keeps per feature, from the sparse codes only
(``SAEEncoder.encode_sparse``; the work per batch is O(non-zero codes), never O(rows x features)):

- ``top_val`` / ``top_row`` (features, top_k): the strongest activations and their row indices, best first;
- ``hist`` (features, bins): counts of non-zero activations in log-spaced bins (``FeaturePassConfig.hist_log10``);
- ``count`` / ``sum`` / ``max`` (features,): firing rows, activation sum and maximum;
- ``count_by_step``, ``sum_by_step`` (steps, features) and ``rows_by_step`` (steps,); the same counts by each
  per-sample column in ``FeaturePassConfig.by`` that the store holds (``task``, ``episode``).

It writes a derived group (:mod:`actstore.tools._features`) and never modifies the store. Every
``checkpoint_every`` batches the accumulators go to ``<name>.partial/``; a rerun with the same SAE and config
continues from there (``resume=True``, the default), and gives the very arrays an uninterrupted run gives.

SAE files: ``.safetensors`` / ``.npz`` holding ``W_enc`` (d, m), ``W_dec`` (m, d), ``b_enc`` (m,), ``b_dec`` (d,) and,
for JumpReLU (Gemma Scope's layout), ``threshold`` (m,). TopK (our checkpoints, ``examples/train_sae.py``):
``z = TopK(relu((x - b_dec) W_enc + b_enc))``; JumpReLU (Gemma Scope): ``pre = x W_enc + b_enc``,
``z = pre * (pre > threshold)`` (Gemma Scope does not subtract ``b_dec`` before encoding).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from .._errors import ConfigError, SchemaMismatchError, StoreExistsError, UnknownKeyError
from ..format._format import NO_STEP
from ._features import _sha256, check_name, derived_root, write_group

if TYPE_CHECKING:
    from ..read._reader import ActStore

__all__ = ["FeaturePassConfig", "SAEEncoder", "feature_pass", "load_sae"]


class SAEEncoder(nn.Module):
    """The encoder (and decoder matrix) of a TopK or JumpReLU SAE; ``encode(x) -> z`` dense (rows, d_sae)."""

    def __init__(self, tensors: dict[str, torch.Tensor], kind: str, k: int | None) -> None:
        super().__init__()
        self.kind, self.k = kind, k
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            if name in tensors:
                self.register_buffer(name, tensors[name].float().contiguous())
        self.d_in, self.d_sae = self.W_enc.shape

    @torch.no_grad()
    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Dense codes (rows, d_sae): :meth:`encode_sparse` scattered."""
        row_N, feat_N, val_N = self.encode_sparse(x_BD)
        z_BM = torch.zeros(len(x_BD), self.d_sae, device=self.W_enc.device)
        return z_BM.index_put_((row_N, feat_N), val_N)

    @torch.no_grad()
    def encode_sparse(self, x_BD: torch.Tensor, *, chunk_rows: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The non-zero codes as ``(row_N, feature_N, value_N)``, rows ascending; ``x`` of any float dtype and
        device. Rows go through in chunks of ``chunk_rows`` (default: the whole batch on a GPU; 512 rows on the CPU,
        so the float32 rows (2 MiB at d=1024) stay in cache and no (rows, d_sae) array is built). The matmul and
        the bias add are separate, as in the formula (on one thread, the same floats as the whole batch at once;
        ``addmm`` would round differently)."""
        dev, n = self.W_enc.device, len(x_BD)
        c = chunk_rows or (n if dev.type != "cpu" else 512)
        buf_CD = torch.empty(min(c, n), self.d_in, device=dev)  # reused: no fresh pages per batch
        topk = self.kind == "topk"
        if topk:
            k = int(self.k or 1)
            vals_BK = torch.empty(n, k, device=dev)
            idx_BK = torch.empty(n, k, dtype=torch.int64, device=dev)
        parts = []
        for a in range(0, n, c):
            x_CD = buf_CD[:min(c, n - a)].copy_(x_BD[a:a + c])
            if topk:
                pre_CM = torch.mm(x_CD.sub_(self.b_dec), self.W_enc).add_(self.b_enc)
                torch.topk(pre_CM, k, dim=-1, sorted=False, out=(vals_BK[a:a + c], idx_BK[a:a + c]))
            else:
                pre_CM = torch.mm(x_CD, self.W_enc).add_(self.b_enc)
                row_N, feat_N = (pre_CM > self.threshold).logical_and_(pre_CM != 0).nonzero(as_tuple=True)
                parts.append((row_N + a, feat_N, pre_CM[row_N, feat_N]))
        if topk:
            row_N, slot_N = (vals_BK > 0).nonzero(as_tuple=True)
            return row_N, idx_BK[row_N, slot_N], vals_BK[row_N, slot_N]
        if not parts:
            empty = torch.zeros(0, dtype=torch.int64, device=dev)
            return empty, empty, torch.zeros(0, device=dev)
        return tuple(torch.cat(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]

    def decode(self, z_BM: torch.Tensor) -> torch.Tensor:
        return z_BM @ self.W_dec + self.b_dec


def load_sae(path: str | os.PathLike[str], *, kind: str = "auto", k: int | None = None) -> SAEEncoder:
    """An SAE from ``.safetensors`` / ``.npz``. ``kind``: ``topk`` (needs ``k``), ``jumprelu`` (needs ``threshold``)
    or ``auto`` (``jumprelu`` when the file holds a non-zero ``threshold``, else ``topk``)."""
    p = Path(path)
    if not p.is_file():
        raise UnknownKeyError(f"no SAE file {p}")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as f:
            tensors = {n: torch.from_numpy(np.asarray(f[n], dtype=np.float32)) for n in f.files}
    else:
        from safetensors.torch import load_file

        tensors = {n: t.float() for n, t in load_file(str(p)).items()}
    need = ("W_enc", "W_dec", "b_enc", "b_dec")
    missing = [n for n in need if n not in tensors]
    if missing:
        raise UnknownKeyError(f"{p} lacks {missing}; an SAE file holds {list(need)} (+ threshold for JumpReLU), "
                              f"found {sorted(tensors)}")
    d_in, d_sae = tensors["W_enc"].shape
    expect = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    for name, shape in expect.items():
        if name in tensors and tuple(tensors[name].shape) != shape:
            raise SchemaMismatchError(f"{name} in {p} has shape {tuple(tensors[name].shape)}, expected {shape} "
                                      f"(W_enc is {(d_in, d_sae)})")
    if kind == "auto":
        thr = tensors.get("threshold")
        kind = "jumprelu" if thr is not None and bool((thr != 0).any()) else "topk"
    if kind not in ("topk", "jumprelu"):
        raise ConfigError(f"unknown SAE kind {kind!r}; kinds are 'auto', 'topk', 'jumprelu'")
    if kind == "jumprelu" and "threshold" not in tensors:
        raise ConfigError(f"a JumpReLU SAE needs a 'threshold' tensor; {p} holds {sorted(tensors)}")
    if kind == "topk" and (k is None or not 0 < k <= d_sae):
        raise ConfigError(f"a TopK SAE needs k in [1, {d_sae}] (--k), got {k!r}")
    return SAEEncoder(tensors, kind, k if kind == "topk" else None)


@dataclass(frozen=True)
class FeaturePassConfig:
    """One feature pass over a (layer, role)."""

    layer: int | str
    """Layer to read."""
    role: str = "decision"
    """Row role to read."""
    name: str = "features"
    """Name of the derived group (``store.features(name)``)."""
    top_k: int = 32
    """Top examples kept per feature."""
    hist_log10: tuple[float, float, int] = (-3.0, 3.0, 48)
    """Histogram bins: log10 of the lowest and highest edge, number of bins (values outside go to the end bins)."""
    by: tuple[str, ...] = ("task", "episode")
    """Per-sample columns to count firing by (those the store's sample table lacks are skipped)."""
    batch_rows: int = 8192
    """Rows per SAE batch (rounded up to whole chunks of the store)."""
    device: str | None = None
    """Where the SAE runs (None: cuda when available, else cpu)."""
    checkpoint_every: int = 50
    """Batches between checkpoints of the accumulators (resume after a kill)."""
    cpu_threads: int | None = 1
    """Intra-op torch threads of the reader and compute threads when the SAE runs on the CPU (1: best on a small or
    busy machine, where parallel regions stall on busy cores; None: torch's default, for a big SAE on many idle
    cores). The decode pool's threads are separate."""

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.top_k < 1 or self.batch_rows < 1 or self.checkpoint_every < 1:
            raise ConfigError(f"top_k, batch_rows and checkpoint_every must be >= 1, got {self.top_k}, "
                              f"{self.batch_rows}, {self.checkpoint_every}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError(f"cpu_threads must be None (torch's default) or >= 1, got {self.cpu_threads}")
        lo, hi, bins = self.hist_log10
        if not lo < hi or bins < 1:
            raise ConfigError(f"hist_log10 must be (lo < hi, bins >= 1), got {self.hist_log10}")


class _Stats:
    """The accumulators on the SAE's device."""

    def __init__(self, m: int, k: int, bins: int, groups: dict[str, int], dev: torch.device) -> None:
        i64, f64 = dict(dtype=torch.int64, device=dev), dict(dtype=torch.float64, device=dev)
        self.t: dict[str, torch.Tensor] = {
            "count": torch.zeros(m, **i64), "sum": torch.zeros(m, **f64),
            "max": torch.zeros(m, dtype=torch.float32, device=dev), "hist": torch.zeros(m, bins, **i64),
            "top_val": torch.zeros(m, k, dtype=torch.float32, device=dev), "top_row": torch.full((m, k), -1, **i64),
            "sum_by_step": torch.zeros(groups["step"], m, **f64),
        }
        for g, n in groups.items():
            self.t[f"count_by_{g}"] = torch.zeros(n, m, **i64)
            self.t[f"rows_by_{g}"] = torch.zeros(n, **i64)

    def numpy(self) -> dict[str, np.ndarray]:
        return {k: v.cpu().numpy() for k, v in self.t.items()}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        for k, v in self.t.items():
            v.copy_(torch.from_numpy(arrays[k]))


def _group_index(store: ActStore, role: str, by: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """Per role row: its bucket in each grouping (``step`` and each ``by`` column), and the bucket values."""
    table = store.rows(role)
    steps = np.unique(table["step"])
    index = {"step": np.searchsorted(steps, table["step"])}
    values: dict[str, list] = {"step": [int(s) for s in steps] or [NO_STEP]}
    samples = store.samples()
    present = [c for c in by if c in samples and c != "sample"]
    if present:
        ids = samples["sample"]
        order = np.argsort(ids, kind="stable")
        where = order[np.minimum(np.searchsorted(ids[order], table["sample"]), max(len(ids) - 1, 0))]
        for c in present:
            col = np.asarray(samples[c])[where] if len(ids) else np.zeros(0, dtype=np.int64)
            uniq = np.unique(col)
            index[c] = np.searchsorted(uniq, col)
            values[c] = [int(v) for v in uniq]
    return index, values


def _update(st: _Stats, codes: tuple[torch.Tensor, torch.Tensor, torch.Tensor], first_row: int,
            grp: dict[str, torch.Tensor], hist: tuple[float, float, int]) -> None:
    """Add one batch's sparse codes (``SAEEncoder.encode_sparse``: row in the batch, feature, non-zero value) to
    the accumulators. Work is O(non-zero codes) plus O(batch rows), never O(rows x features)."""
    t = st.t
    row_N, feat_N, val_N = codes
    m, bins = t["count"].shape[0], hist[2]
    step_N = grp["step"][row_N]
    t["sum"].index_add_(0, feat_N, val_N.double())
    t["sum_by_step"].view(-1).index_add_(0, step_N * m + feat_N, val_N.double())
    for g, gi_B in grp.items():
        t[f"rows_by_{g}"].index_add_(0, gi_B, torch.ones_like(gi_B))
    fire = val_N > 0  # a JumpReLU with a negative threshold can write negative codes: summed, not counted
    if not bool(fire.all()):
        row_N, feat_N, val_N, step_N = row_N[fire], feat_N[fire], val_N[fire], step_N[fire]
    ones_N = torch.ones_like(feat_N)
    t["count"].index_add_(0, feat_N, ones_N)
    t["max"].scatter_reduce_(0, feat_N, val_N, "amax")
    lo, hi, _ = hist
    b_N = ((val_N.log10() - lo) * (bins / (hi - lo))).floor_().clamp_(0, bins - 1).long()
    t["hist"].view(-1).index_add_(0, feat_N * bins + b_N, ones_N)
    for g, gi_B in grp.items():
        key_N = step_N if g == "step" else gi_B[row_N]
        t[f"count_by_{g}"].view(-1).index_add_(0, key_N * m + feat_N, ones_N)
    _update_top(t, feat_N, val_N, row_N + first_row)


def _update_top(t: dict[str, torch.Tensor], feat_N: torch.Tensor, val_N: torch.Tensor, row_N: torch.Tensor) -> None:
    """Merge candidate (feature, value, row) into ``top_val`` / ``top_row`` (best first; ties keep the earlier
    row). Only candidates above their feature's running threshold (its k-th best so far) are looked at, so once
    the tables fill up most batches touch a handful of features."""
    k = t["top_val"].shape[1]
    keep = val_N > t["top_val"][:, -1][feat_N]
    if not bool(keep.any()):
        return
    feat_N, val_N, row_N = feat_N[keep], val_N[keep], row_N[keep]
    order = torch.argsort(val_N, descending=True, stable=True)  # best first, then grouped by feature
    order = order[torch.argsort(feat_N[order], stable=True)]
    feat_N, val_N, row_N = feat_N[order], val_N[order], row_N[order]
    feats_U, counts_U = torch.unique_consecutive(feat_N, return_counts=True)
    slot_U = torch.arange(len(feats_U), device=feat_N.device).repeat_interleave(counts_U)
    rank_N = torch.arange(len(feat_N), device=feat_N.device) - (counts_U.cumsum(0) - counts_U)[slot_U]
    best = rank_N < k
    new_val = torch.zeros(len(feats_U), k, dtype=val_N.dtype, device=val_N.device)
    new_row = torch.full((len(feats_U), k), -1, dtype=row_N.dtype, device=row_N.device)
    new_val[slot_U[best], rank_N[best]] = val_N[best]
    new_row[slot_U[best], rank_N[best]] = row_N[best]
    cand_val = torch.cat((t["top_val"][feats_U], new_val), dim=1)  # old first: on a tie the earlier row stays
    cand_row = torch.cat((t["top_row"][feats_U], new_row), dim=1)
    val, pos = cand_val.sort(dim=1, descending=True, stable=True)
    val, pos = val[:, :k], pos[:, :k]
    t["top_val"][feats_U] = val
    t["top_row"][feats_U] = torch.where(val > 0, cand_row.gather(1, pos), torch.full_like(pos, -1))


def _identity(store: ActStore, cfg: FeaturePassConfig, sae_path: Path, sae: SAEEncoder, n_rows: int) -> dict:
    return {"name": cfg.name, "layer": cfg.layer, "role": cfg.role, "n_rows": n_rows, "top_k": cfg.top_k,
            "hist": {"log10_lo": cfg.hist_log10[0], "log10_hi": cfg.hist_log10[1], "bins": cfg.hist_log10[2]},
            "batch_rows": cfg.batch_rows,
            "sae": {"path": str(sae_path.resolve()), "sha256": _sha256(sae_path), "kind": sae.kind, "k": sae.k,
                    "d_in": int(sae.d_in), "d_sae": int(sae.d_sae)},
            "store": {"path": str(store.path), "format_version": store.format_version}}


def _save_partial(folder: Path, ident: dict, next_row: int, st: _Stats) -> None:
    tmp = folder.with_name(folder.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    np.savez(tmp / "state.npz", **st.numpy())
    (tmp / "state.json").write_text(json.dumps({"identity": ident, "next_row": next_row}))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _load_partial(folder: Path, ident: dict, st: _Stats) -> int:
    state_file = folder / "state.json"
    if not state_file.is_file():
        return 0
    state = json.loads(state_file.read_text())
    if state.get("identity") != ident:  # another SAE, config or row count: start over
        return 0
    with np.load(folder / "state.npz", allow_pickle=False) as f:
        st.load({k: f[k] for k in f.files})
    return int(state["next_row"])


def feature_pass(store: ActStore, sae_path: str | os.PathLike[str], cfg: FeaturePassConfig, *,
                 sae_kind: Literal["auto", "topk", "jumprelu"] = "auto", k: int | None = None,
                 overwrite: bool = False, resume: bool = True, progress: bool = True,
                 stop_after: int | None = None) -> Path:
    """Run the pass and write the group; returns its folder. ``stop_after`` (tests) stops after that many batches,
    leaving only the checkpoint, as a kill would."""
    root = derived_root(store.path)
    final = root / cfg.name
    if (final / "features.json").exists() and not overwrite:
        raise StoreExistsError(f"feature group {cfg.name!r} already exists at {final}; pass overwrite=True "
                               "(--overwrite) to recompute it, or choose another --name")
    sae_file = Path(sae_path)
    sae = load_sae(sae_file, kind=sae_kind, k=k)
    view = store.view(cfg.layer, cfg.role)
    if view.shape[1] != sae.d_in:
        raise SchemaMismatchError(f"SAE {sae_file} has d_in {sae.d_in}; layer {cfg.layer!r} role {cfg.role!r} rows "
                                  f"have width {view.shape[1]}")
    dev = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sae.to(dev)
    n = len(view)
    chunk = store.record.layout.chunk_rows
    batch = -(-cfg.batch_rows // chunk) * chunk
    gindex, gvalues = _group_index(store, cfg.role, cfg.by)
    st = _Stats(sae.d_sae, cfg.top_k, cfg.hist_log10[2], {g: len(v) for g, v in gvalues.items()}, dev)
    ident = {**_identity(store, cfg, sae_file, sae, n), "batch_rows": batch}
    partial = root / (cfg.name + ".partial")
    start = _load_partial(partial, ident, st) if resume else 0
    gidx_t = {g: torch.from_numpy(v.astype(np.int64)) for g, v in gindex.items()}
    starts = list(range(start, n, batch))
    bar = _bar(progress, n, start, f"features {cfg.name}")
    t0, done = time.perf_counter(), 0

    def read(a: int) -> torch.Tensor:  # reader thread
        x = view[a:min(a + batch, n)]
        return x.pin_memory() if dev.type == "cuda" else x

    def compute(x: torch.Tensor, a: int) -> None:  # compute thread: encode, statistics
        with torch.no_grad():
            codes = sae.encode_sparse(x.to(dev, non_blocking=True))
            _update(st, codes, a, {g: v[a:a + len(x)].to(dev) for g, v in gidx_t.items()}, cfg.hist_log10)

    # Three threads in a pipeline: reader (batches i+1, i+2) | compute (batch i) | this one (progress, checkpoints). The
    # workers run torch with cfg.cpu_threads intra-op threads (default 1): the decode pool keeps the other cores,
    # and the small per-batch ops stall badly when a parallel region waits for a busy core.
    one = {"initializer": torch.set_num_threads, "initargs": (cfg.cpu_threads or torch.get_num_threads(),)}
    with ThreadPoolExecutor(1, thread_name_prefix="actstore-features-read", **one) as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="actstore-features-compute", **one) as worker:
        ahead = deque(reader.submit(read, a) for a in starts[:2])  # two batches read ahead, to ride out stalls
        pending = None
        for i, a in enumerate(starts):
            x = ahead.popleft().result()
            if i + 2 < len(starts):
                ahead.append(reader.submit(read, starts[i + 2]))
            if pending is not None:
                pending.result()
            pending = worker.submit(compute, x, a)
            b = min(a + batch, n)
            checkpoint = (i + 1) % cfg.checkpoint_every == 0 and b < n
            stop = stop_after is not None and i + 1 >= stop_after
            if checkpoint or stop:
                pending.result()
                _save_partial(partial, ident, b, st)
            if stop:
                bar.close()
                return partial
            done += b - a
            bar.update(b - a)
        if pending is not None:
            pending.result()
    bar.close()
    elapsed = time.perf_counter() - t0
    record = {**ident, "kind": "sae_features", "steps": gvalues["step"],
              "groups": {g: v for g, v in gvalues.items() if g != "step"}, "config": _jsonable(asdict(cfg)),
              "rows_per_s": done / elapsed if elapsed > 0 else None, "device": str(dev)}
    writing = root / (cfg.name + ".writing")
    if writing.exists():
        shutil.rmtree(writing)
    write_group(writing, record, st.numpy())
    if final.exists():
        shutil.rmtree(final)
    os.replace(writing, final)
    if partial.exists():
        shutil.rmtree(partial)
    return final


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(progress: bool, total: int, initial: int, desc: str) -> Any:
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="row", unit_scale=True)
