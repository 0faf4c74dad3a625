"""Memory and start-up against the number of rows (issue 12): open, first shuffled batch, one epoch, filtered
``select``, each in a fresh process, beside the whole-row-table load every epoch and select paid before.

    python -m benchmarks.bench_scale --sizes 1e6 1e7            # a few minutes here
    python -m benchmarks.bench_scale --sizes 1e6 1e7 1e8        # + about 6 GB of disk and ten minutes
    python -m benchmarks.bench_scale --smoke                    # tiny, seconds (the test runs this)

Each store holds one role (``decision``) of ``N`` rows of d=16 bf16 activations, codec ``none``, the default
``chunk_rows`` (4096), written with the public writer API in batches (the generator never holds ``N`` rows). Its
row table is ordered as a capture writes it: forward batches of ``batch_samples`` samples, each forward batch
step by step (10 denoising steps), each step sample by sample, ``positions`` rows per sample and step.

Measured in fresh processes, RSS from ``/proc/self/status`` above the baseline after importing actstore, torch
and the reader modules (VmHWM is reset there through ``/proc/self/clear_refs``, so the peak is the run's own):

- ``epoch``: ``actstore.open`` (time, RSS), time from the open store to the first batch of the default shuffled
  loader (``store.loader(layer, role)``; the epoch plan is built inside), RSS after it, then the peak over the
  whole epoch, and the row-table chunks the loader read (0: an unfiltered epoch needs no row table).
- ``select``: ``store.select(layer, role, step=3)``, ``select(..., sample=[10 samples])`` and
  ``select(..., match={"position": [0..positions-2]})`` (most rows: what a selection costs while it is built):
  time, RSS and the row-table chunks read (``RowIndex.chunks_read``), against the chunks whose min..max of that
  column can hold one of the values, computed from the generator's own columns while writing (an independent
  reference).
- ``table`` (the baseline, "old path"): ``store.rows(role)``, the whole row table every epoch plan and every
  select loaded before, then ``np.flatnonzero(rows["step"] == 3)`` (the old select) on it.

Mixing (``--mixing``, issue 12 item 4): the default loader (batches of 4096, ``shuffle_chunks=8``) over a store
whose samples are 100 consecutive rows (10 steps of 10 positions), and over one in capture order; distinct
samples per batch and same-sample / same-step pair fractions against a simulated uniform permutation, over the
whole epoch and over its last buffer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tyro

ROOT = Path(__file__).resolve().parents[1]
ROLE, LAYER = "decision", 14
BATCH = 4096
"""The default loader's batch size (``LoaderConfig.batch_size``)."""


@dataclass(frozen=True)
class Layout:
    """How the rows of a capture-like row table are ordered."""

    batch_samples: int = 32
    """Samples per forward batch; a capture writes each forward batch step by step."""
    steps: int = 10
    """Denoising steps (``step`` 0..steps-1)."""
    positions: int = 10
    """Rows per sample and step (``position`` 0..positions-1)."""

    def columns(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        """Row-table columns of rows ``[lo, hi)``."""
        r = np.arange(lo, hi, dtype=np.int64)
        per_forward = self.batch_samples * self.steps * self.positions
        within = r % per_forward
        per_step = self.batch_samples * self.positions
        return {"sample": r // per_forward * self.batch_samples + within % per_step // self.positions,
                "step": within // per_step, "position": r % self.positions}


# ------------------------------------------------------------------------------------------------ writing
def write_store(path: Path, n_rows: int, layout: Layout, d: int, chunk_rows: int, batch_chunks: int = 64,
                watch: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Write ``n_rows`` rows (d ``d`` bf16, codec none) in batches of ``batch_chunks`` chunks, one commit per
    batch. Returns, per chunk, whether it holds a row of each ``watch`` column's values (and its min..max
    can), computed from the generated columns: the reference for the filters' chunk counts."""
    import torch

    import actstore

    watch = watch or {}
    rng = np.random.default_rng(0)
    pool = torch.from_numpy(rng.standard_normal((batch_chunks * chunk_rows, d), dtype=np.float32)).bfloat16()
    holds: dict[str, list[np.ndarray]] = {name: [] for name in watch}
    step = batch_chunks * chunk_rows
    with actstore.create(path, chunk_rows=chunk_rows, codec="none", autocommit=False, overwrite=True) as w:
        for lo in range(0, n_rows, step):
            hi = min(n_rows, lo + step)
            cols = layout.columns(lo, hi)
            w.append(ROLE, cols, {LAYER: pool[: hi - lo]})
            w.commit({"rows": hi})
            for name, values in watch.items():
                col, v = cols[name], np.asarray(values)
                for a in range(0, hi - lo, chunk_rows):
                    piece = col[a : a + chunk_rows]
                    has = bool(np.isin(piece, v).any())
                    can = bool(((piece.min() <= v) & (v <= piece.max())).any())
                    holds[name].append(np.array([has, can]))
    return {name: np.array(v).reshape(-1, 2) for name, v in holds.items()}


# ------------------------------------------------------------------------------------------------ probes
_WARM = ("actstore.read._reader", "actstore.train._loader", "actstore.train._shuffle", "actstore.read._rowindex",
         "actstore.read._blocks", "actstore.read._view", "torch")


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _probe(kind: str, path: str, args: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process; RSS figures are bytes above the post-import baseline."""
    import importlib

    import actstore

    here = Path(actstore.__file__).parent
    for name in _WARM:  # only this package's own modules (an editable install would fill gaps from this tree)
        if not name.startswith("actstore.") or (here / Path(*name.split(".")[1:])).with_suffix(".py").exists():
            importlib.import_module(name)

    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        hwm_reset = True
    except OSError:
        hwm_reset = False
    base = _status("VmRSS")
    out: dict[str, Any] = {"baseline_rss": base, "hwm_reset": hwm_reset}

    def grown() -> int:
        return _status("VmRSS") - base

    t0 = time.perf_counter()
    store = actstore.open(path)
    out["open_s"] = time.perf_counter() - t0
    out["rss_open"] = grown()
    index = store.index(ROLE) if hasattr(store, "index") else None  # None: code from before issue 12
    out["n_chunks"] = -(-store.num_rows(ROLE) // store.meta["layout"]["chunk_rows"])
    if kind == "epoch":
        t0 = time.perf_counter()
        loader = store.loader(LAYER, ROLE, batch_size=args["batch_size"], **_filter(args))
        it = iter(loader)
        first = next(it)
        out["first_batch_s"] = time.perf_counter() - t0
        out["rss_first_batch"] = grown()
        rows = int(first.shape[0])
        for batch in it:
            rows += int(batch.shape[0])
        out["epoch_s"] = time.perf_counter() - t0
        out["epoch_rows"] = rows
        out["plan_bytes"] = getattr(loader.plan(), "nbytes", None)
    elif kind == "select":
        t0 = time.perf_counter()
        view = store.select(LAYER, ROLE, **_filter(args))
        out["select_s"] = time.perf_counter() - t0
        out["selected_rows"] = len(view)
        out["rss_select"] = grown()
    elif kind == "table":
        t0 = time.perf_counter()
        table = store.rows(ROLE)
        out["table_s"] = time.perf_counter() - t0
        out["rss_table"] = grown()
        t0 = time.perf_counter()
        out["selected_rows"] = int(np.flatnonzero(table["step"] == 3).size)
        out["old_select_s"] = out["table_s"] + time.perf_counter() - t0
    elif kind == "mixing":
        loader = store.loader(LAYER, ROLE, batch_size=args["batch_size"], with_rows=True, drop_last=True)
        out["batches_per_buffer"] = [int(c) for c in loader.plan().batch_counts()]
        out["per_batch"] = [(*_pair_stats(rows["sample"].numpy()), _pair_stats(rows["step"].numpy())[1])
                            for _, rows in loader]
    else:
        raise ValueError(f"unknown probe {kind!r}; valid probes are ['epoch', 'select', 'table', 'mixing']")
    out["peak_rss"] = _status("VmHWM") - base
    if index is not None:
        out["chunks_read"], out["full_reads"] = index.chunks_read, index.full_reads
    store.close()
    return out


def _filter(args: dict[str, Any]) -> dict[str, Any]:
    """``select`` / ``loader`` keywords of a probe's ``column`` / ``values`` (none without them)."""
    column, values = args.get("column"), args.get("values")
    if column is None:
        return {}
    return {column: values} if column in ("step", "sample") else {"match": {column: values}}


def _probe_main() -> None:
    kind, path, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    print(json.dumps(_probe(kind, path, args)))


def run_probe(kind: str, path: Path, old: Path | None = None, **args: Any) -> dict[str, Any]:
    """:func:`_probe` in a fresh Python process; with ``old``, a directory holding the ``actstore`` package of
    another commit (see :func:`extract_old`), that code is imported instead of this tree's."""
    code = "from benchmarks.bench_scale import _probe_main; _probe_main()"
    env = dict(os.environ)
    if old is not None:  # the working directory comes first on sys.path: there, ``actstore`` is the old one
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code, kind, str(path), json.dumps(args)], cwd=old or ROOT,
                          env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"probe {kind} on {path} failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def extract_old(commit: str, into: Path) -> Path:
    """The ``actstore`` package of ``commit`` (``git archive``; the repository is only read) under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit, "actstore"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


# ------------------------------------------------------------------------------------------------ one size
def measure(path: Path, n_rows: int, layout: Layout, d: int, chunk_rows: int, old: Path | None = None
            ) -> dict[str, Any]:
    """Write a store of ``n_rows`` rows and run every probe on it (with ``old``, the epoch and the step select
    also with the code from before issue 12)."""
    n_samples = -(-n_rows // (layout.steps * layout.positions))
    s0 = n_samples // 2 // layout.batch_samples * layout.batch_samples + 3
    samples = list(range(s0, min(n_samples, s0 + 10)))
    t0 = time.perf_counter()
    filters = {"step": [3], "sample": samples, "position": list(range(layout.positions - 1))}
    ref = write_store(path, n_rows, layout, d, chunk_rows, watch=filters)
    write_s = time.perf_counter() - t0
    res: dict[str, Any] = {"rows": n_rows, "write_s": write_s, "stored_bytes": _du(path)}
    res["epoch"] = run_probe("epoch", path, batch_size=BATCH)
    res["epoch"]["rows_ok"] = res["epoch"]["epoch_rows"] == n_rows
    for column, values in filters.items():
        got = run_probe("select", path, column=column, values=values)
        got["values"] = values
        got["chunks_holding"] = int(ref[column][:, 0].sum())
        got["chunks_minmax_can_match"] = int(ref[column][:, 1].sum())
        got["fraction_read"] = got["chunks_read"] / got["n_chunks"]
        res[f"select_{column}"] = got
    res["table"] = run_probe("table", path)
    if old is not None:
        res["old_code_epoch"] = run_probe("epoch", path, old, batch_size=BATCH)
        res["old_code_select_step"] = run_probe("select", path, old, column="step", values=[3])
    return res


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------------------------ mixing
def _pair_stats(col: np.ndarray) -> tuple[int, float]:
    """Distinct values of a batch's column and the fraction of its row pairs that share a value."""
    _, c = np.unique(col, return_counts=True)
    return len(c), float((c * (c - 1)).sum() / (col.size * (col.size - 1)))


def _summary(per_batch: list[tuple[int, float, float]]) -> dict[str, float]:
    a = np.asarray(per_batch, dtype=np.float64)
    return {"distinct_samples_per_batch": float(a[:, 0].mean()), "same_sample_pair_fraction": float(a[:, 1].mean()),
            "same_step_pair_fraction": float(a[:, 2].mean()), "batches": int(a.shape[0])}


def mixing(path: Path, n_rows: int, layout: Layout, d: int, chunk_rows: int, old: Path | None = None,
           sims: int = 3) -> dict[str, Any]:
    """The default loader's mixing on one store (and, with ``old``, the code from before issue 12's) against a
    simulated uniform permutation of the same rows."""
    write_store(path, n_rows, layout, d, chunk_rows)
    res: dict[str, Any] = {"layout": asdict(layout), "rows": n_rows, "chunks": -(-n_rows // chunk_rows),
                           "batch_size": BATCH, "shuffle_chunks": 8}
    for name, code in (("default_loader", None), ("old_code_loader", old)):
        if name == "default_loader" or old is not None:
            got = run_probe("mixing", path, code, batch_size=BATCH)
            counts, per_batch = got["batches_per_buffer"], got["per_batch"]
            res[f"{name}_batches_per_buffer"] = counts
            res[name] = _summary(per_batch)
            res[f"{name}_last_buffer"] = _summary(per_batch[-counts[-1]:])
    rng = np.random.default_rng(0)
    cols = layout.columns(0, n_rows)
    uniform = []
    for _ in range(sims):
        perm = rng.permutation(n_rows)[: n_rows // BATCH * BATCH].reshape(-1, BATCH)
        for ids in perm:
            uniform.append((*_pair_stats(cols["sample"][ids]), _pair_stats(cols["step"][ids])[1]))
    res["uniform_permutation"] = _summary(uniform)
    return res


# ------------------------------------------------------------------------------------------------ report
def _mb(b: float) -> str:
    return f"{b / 1e6:+.1f} MB"


def slopes(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Bytes of RSS growth per row: at each size (growth / N) and between the two largest sizes."""
    def per_row(r: dict[str, Any]) -> dict[str, float]:
        return {"new_first_batch": r["epoch"]["rss_first_batch"] / r["rows"],
                "new_epoch_peak": r["epoch"]["peak_rss"] / r["rows"],
                "new_select_step_peak": r["select_step"]["peak_rss"] / r["rows"],
                "new_select_most_rows_peak": r["select_position"]["peak_rss"] / r["rows"],
                "old_row_table": r["table"]["rss_table"] / r["rows"],
                "old_row_table_peak": r["table"]["peak_rss"] / r["rows"]}

    def old_per_row(r: dict[str, Any]) -> dict[str, float]:
        if "old_code_epoch" not in r:
            return {}
        return {"old_code_first_batch": r["old_code_epoch"]["rss_first_batch"] / r["rows"],
                "old_code_epoch_peak": r["old_code_epoch"]["peak_rss"] / r["rows"],
                "old_code_select_step_peak": r["old_code_select_step"]["peak_rss"] / r["rows"]}

    out = {f"at_{r['rows']:.0e}": per_row(r) | old_per_row(r) for r in results}
    if len(results) >= 2:
        a, b = sorted(results, key=lambda r: r["rows"])[-2:]
        pa, pb = per_row(a), per_row(b)
        out["between_largest_two"] = {k: (pb[k] * b["rows"] - pa[k] * a["rows"]) / (b["rows"] - a["rows"])
                                      for k in pa}
        old = sorted((r for r in results if "old_code_epoch" in r), key=lambda r: r["rows"])[-2:]
        if len(old) == 2:
            pa, pb = old_per_row(old[0]), old_per_row(old[1])
            span = old[1]["rows"] - old[0]["rows"]
            out["old_code_between_largest_two"] = {k: (pb[k] * old[1]["rows"] - pa[k] * old[0]["rows"]) / span
                                                   for k in pa}
    return out


def print_tables(res: dict[str, Any]) -> None:
    print(f"# scale (d={res['d']} bf16, codec none, chunk_rows={res['chunk_rows']}, batches of {BATCH}, "
          "fresh process per probe, RSS above the post-import baseline)\n")
    print("| rows | chunks | open | first batch after open | RSS after open | RSS after first batch | "
          "peak RSS over the epoch | epoch | old: rows(role) | old: RSS after rows(role) | old: its peak |")
    print("|" + "---|" * 11)
    for r in res["sizes"]:
        e, t = r["epoch"], r["table"]
        print(f"| {r['rows']:.0e} | {e['n_chunks']} | {e['open_s'] * 1e3:.0f} ms | {e['first_batch_s']:.2f} s | "
              f"{_mb(e['rss_open'])} | {_mb(e['rss_first_batch'])} | {_mb(e['peak_rss'])} | {e['epoch_s']:.1f} s | "
              f"{t['table_s']:.2f} s | {_mb(t['rss_table'])} | {_mb(t['peak_rss'])} |")
        if "old_code_epoch" in r:
            o = r["old_code_epoch"]
            print(f"| {r['rows']:.0e}, old code ({res['old_commit']}) | | {o['open_s'] * 1e3:.0f} ms | "
                  f"{o['first_batch_s']:.2f} s | {_mb(o['rss_open'])} | {_mb(o['rss_first_batch'])} | "
                  f"{_mb(o['peak_rss'])} | {o['epoch_s']:.1f} s | | | |")
    print("\n| rows | filter | select | row-table chunks read | chunks whose min..max can match | selected rows | "
          "peak RSS | old: rows(role) + mask (step=3) |")
    print("|" + "---|" * 8)
    for r in res["sizes"]:
        for column in ("step", "sample", "position"):
            x = r[f"select_{column}"]
            v = x["values"]
            label = f"{column}={v[0]}" if len(v) == 1 else f"{column} in [{v[0]}..{v[-1]}]"
            old = f"{r['table']['old_select_s']:.2f} s" if column == "step" else "-"
            print(f"| {r['rows']:.0e} | {label} | {x['select_s']:.3f} s | {x['chunks_read']}/{x['n_chunks']} | "
                  f"{x['chunks_minmax_can_match']} | {x['selected_rows']} | {_mb(x['peak_rss'])} | {old} |")
        if "old_code_select_step" in r:
            o = r["old_code_select_step"]
            print(f"| {r['rows']:.0e} | step=3, old code ({res['old_commit']}) | {o['select_s']:.3f} s | whole table | "
                  f"| {o['selected_rows']} | {_mb(o['peak_rss'])} | |")
    print("\n# bytes of RSS growth per row\n")
    keys = list(dict.fromkeys(k for row in res["slopes"].values() for k in row))
    print("| " + " | ".join(["where", *keys]) + " |")
    print("|" + "---|" * (1 + len(keys)))
    for where, row in res["slopes"].items():
        print(f"| {where} | " + " | ".join(f"{row[k]:.2f}" if k in row else "" for k in keys) + " |")
    for name, m in res.get("mixing", {}).items():
        print(f"\n# mixing, {name} ({m['rows']} rows, {m['chunks']} chunks, batches per buffer "
              f"{m['default_loader_batches_per_buffer']}; old code: {m.get('old_code_loader_batches_per_buffer')})\n")
        print("| batches | distinct samples per batch | same-sample pair fraction | same-step pair fraction |")
        print("|---|---|---|---|")
        for k in ("default_loader", "default_loader_last_buffer", "old_code_loader", "old_code_loader_last_buffer",
                  "uniform_permutation"):
            if k not in m:
                continue
            s = m[k]
            print(f"| {k} | {s['distinct_samples_per_batch']:.1f} | {s['same_sample_pair_fraction']:.5f} | "
                  f"{s['same_step_pair_fraction']:.4f} |")


def main(smoke: bool = False, sizes: tuple[float, ...] = (1e6, 1e7), d: int = 16, chunk_rows: int = 4096,
         layout: Layout = Layout(), mixing_chunks: int = 130, no_mixing: bool = False, old_commit: str | None = None,
         old_max_rows: float = 1e7, out: Path | None = None, work_dir: Path | None = None) -> dict[str, Any]:
    """Write a store of each size, measure it in fresh processes, then (unless ``no_mixing``) the loader's mixing.

    Args:
        smoke: one tiny store (30 chunks of 1024 rows) and one small mixing store; seconds.
        sizes: row counts of the stores (``1e6 1e7 1e8``).
        d: activation width (bf16).
        chunk_rows: rows per chunk (the store default).
        layout: order of the capture-like row table.
        mixing_chunks: chunks of the mixing stores (not a multiple of 8: the old plan left a buffer of leftovers).
        no_mixing: skip the mixing measurement.
        old_commit: also measure the epoch, the step select and the mixing with the ``actstore`` package of this
            commit (``d953f78``: the last one before issue 12's chunk-by-chunk row tables), in the same run.
        old_max_rows: run the old code only on stores of at most this many rows (it holds several N-long arrays).
        out: write the results as JSON here.
        work_dir: scratch directory (default: a temporary one); each store is deleted after its probes.
    """
    if smoke:
        sizes, chunk_rows, mixing_chunks = (30_000,), 1024, 13
    work = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=work_dir))
    res: dict[str, Any] = {"d": d, "dtype": "bfloat16", "codec": "none", "chunk_rows": chunk_rows,
                           "layout": asdict(layout), "batch_size": BATCH, "old_commit": old_commit, "sizes": []}
    try:
        old = extract_old(old_commit, work / "old") if old_commit else None
        for n in sorted(int(s) for s in sizes):
            path = work / f"n{n}.zarr"
            res["sizes"].append(measure(path, n, layout, d, chunk_rows, old if n <= old_max_rows else None))
            shutil.rmtree(path, ignore_errors=True)
            print(f"measured {n:.0e} rows", file=sys.stderr, flush=True)
        res["slopes"] = slopes(res["sizes"])
        if not no_mixing:
            n_mix = mixing_chunks * chunk_rows
            res["mixing"] = {
                "samples_of_100_consecutive_rows": mixing(work / "mix_a.zarr", n_mix, Layout(1, 10, 10), d, chunk_rows,
                                                          old)}
            if not smoke:
                res["mixing"]["capture_order"] = mixing(work / "mix_b.zarr", n_mix, layout, d, chunk_rows, old)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_tables(res)
    if out is not None:
        Path(out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    tyro.cli(main)
