"""Writer ingest against its thread count, and where its CPU goes (issue 13 item 1).

    python -m benchmarks.bench_writer                 # 512 MiB of bf16 rows, d=2048, threads 1, 2, 4, ... cores
    python -m benchmarks.bench_writer --smoke         # tiny, seconds (the test runs this)

Every write is ``actstore.create`` / ``append`` (``--append-rows`` rows per call, a forward's worth, with a
``done`` callback as a capture gives) / ``close``
of the same rows, timed from the first append until ``close`` returns, for each codec and each
``StoreConfig.threads``, in three settings of the rest of the process:

- ``idle``: nothing else runs;
- ``torch``: another thread runs small CPU torch ops back to back, as a model's forward dispatches kernels (each op
  releases the GIL and takes it back);
- ``python``: another thread runs pure-Python arithmetic, which gives the GIL up only when the switch interval
  forces it (the worst case for threads that release it often).

Where the CPU goes, per GB written: the caller's thread (``append``: checks, queueing), the writer thread (the
serial part: copying rows into chunk buffers, row statistics, commits) and the encode pool (NaN/Inf counts,
encoding, checksums, file writes), each thread's own CPU time; ``other``: the process's CPU less those and the
rival's (other threads: torch's, ...). The writer thread is
the serial part, so it bounds ingest on any number of cores: the report projects ``min(1 / serial, N / total)``
GB/s for N cores from the idle figures (no GIL or memory-bandwidth limit counted: an upper bound).

The baseline, interleaved with the idle writes: the same bytes written as plain 16 MiB files (a chunk's size at
the defaults) by as many threads, temp file + rename as the store writes its chunks, no encoding (``raw_write``;
each case's ``vs_plain_files``). The process's first writes are reported apart (``first_raw_write``, then
``first_write`` through the store, the plain files kept meanwhile): on a virtual machine the page cache of new
files can be memory the host hands out for the first time, and that shows in system time. ``--direct-io``: the
stores (``StoreConfig.direct_io``) and the plain files alike are written with ``O_DIRECT``, past the page cache.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import actstore
from actstore.storage import _direct
from actstore.write import _write_thread

D = 2048
MODES = ("idle", "torch", "python")


@dataclass(frozen=True)
class WriterBenchConfig:
    """What to measure."""

    smoke: bool = False
    """Tiny sizes (seconds); used by the tests."""
    size_mib: int = 512
    """Bytes of activations written per timed write."""
    append_rows: int = 8192
    """Rows per ``append`` call (16 MiB at d=2048 bf16)."""
    codecs: tuple[str, ...] = ("lz4", "none")
    """Codecs to time."""
    threads: tuple[int, ...] = field(default_factory=tuple)
    """Writer thread counts (``StoreConfig.threads``); empty: 1, 2, 4, ... up to the cores."""
    modes: tuple[str, ...] = MODES
    """What the rest of the process does meanwhile (see the module docstring)."""
    nonfinite: str = "count"
    """``StoreConfig.nonfinite`` of every write (``allow`` leaves the NaN/Inf count out)."""
    direct_io: bool = False
    """``StoreConfig.direct_io`` of every store write (chunk files past the page cache)."""
    switch_interval_ms: float | None = None
    """``sys.setswitchinterval`` for the run, in ms (None: the interpreter's, 5 ms by default)."""
    rounds: int = 3
    """Timed writes per case (after one warm-up write); medians are reported."""
    project_cores: int = 16
    """Cores to project the idle figures to."""
    data: str = str(Path(__file__).parent / "_data")
    """Where the generated rows are cached."""
    work: str | None = None
    """Where the stores are written (a temporary directory under ``data`` when None)."""
    out: str | None = None
    """Write the results as JSON here."""


# ------------------------------------------------------------------------------------------- measuring
_writer_cpu: list[float] = []
"""CPU seconds of each writer thread that ended, appended by the patched ``WriterThread.run``."""


_pool_cpu: list[float] = []
"""CPU seconds of each encode-pool thread that ended (``actstore-enc`` threads)."""


@contextmanager
def _thread_cpu() -> Iterator[None]:
    """Record the CPU time of each writer thread (the writer's serial part) and of each encode-pool thread when it
    ends (both end in ``close``)."""
    from concurrent.futures import thread as pool_thread

    run_writer, run_worker = _write_thread.WriterThread.run, pool_thread._worker

    def run(self: Any) -> None:
        try:
            run_writer(self)
        finally:
            _writer_cpu.append(time.thread_time())

    def worker(*args: Any, **kwargs: Any) -> None:
        try:
            run_worker(*args, **kwargs)
        finally:
            if threading.current_thread().name.startswith("actstore-enc"):
                _pool_cpu.append(time.thread_time())

    _write_thread.WriterThread.run = run  # type: ignore[method-assign]
    pool_thread._worker = worker  # type: ignore[attr-defined]
    try:
        yield
    finally:
        _write_thread.WriterThread.run = run_writer  # type: ignore[method-assign]
        pool_thread._worker = run_worker  # type: ignore[attr-defined]


def _process_cpu() -> tuple[float, float]:
    """The process's (user + system, system) CPU seconds so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_stime


class _Rival:
    """Another thread of the process, busy in one of :data:`MODES` until stopped; counts its iterations."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.count = 0
        self.cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True) if mode != "idle" else None

    def _run(self) -> None:
        t0 = time.thread_time()
        if self.mode == "torch":
            a = torch.randn(64, 64)
            while not self._stop.is_set():
                a = torch.tanh(a) * 0.5 + 0.1
                self.count += 1
        else:
            x = 0
            while not self._stop.is_set():
                for i in range(1000):
                    x += i * i
                self.count += 1
        self.cpu = time.thread_time() - t0

    def __enter__(self) -> _Rival:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _rival_rate(mode: str, seconds: float) -> float:
    """Iterations per second of the rival alone (its pace without a writer)."""
    with _Rival(mode) as rival:
        time.sleep(seconds)
        n = rival.count
    return n / seconds


def _released() -> None:
    """The ``done`` of every append, as a capture passes one: the writer may then encode whole chunks straight from
    the appended rows (see ``StoreWriter.append``)."""


def write_once(root: Path, u16_ND: np.ndarray, codec: str, threads: int, append_rows: int,
               mode: str, nonfinite: str = "count", direct_io: bool = False) -> dict[str, float]:
    """One timed write of every row of ``u16_ND``; GB/s and CPU seconds per GB by thread."""
    acts = torch.from_numpy(u16_ND.view(np.int16)).view(torch.bfloat16)
    n = acts.shape[0]
    rows = {"sample": np.arange(n, dtype=np.int64) // 256, "step": np.zeros(n, np.int64),
            "position": np.arange(n, dtype=np.int64) % 256}
    path = Path(tempfile.mkdtemp(dir=root)) / "w.zarr"
    writer = actstore.create(path, codec=codec, threads=threads, nonfinite=nonfinite, direct_io=direct_io)
    with _Rival(mode) as rival:
        before, pool_before = len(_writer_cpu), len(_pool_cpu)
        (p0, sys0), c0, t0 = _process_cpu(), time.thread_time(), time.perf_counter()
        for s in range(0, n, append_rows):
            e = min(n, s + append_rows)
            writer.append("decision", rows={k: v[s:e] for k, v in rows.items()}, acts={14: acts[s:e]},
                          done=_released)
        caller = time.thread_time() - c0
        writer.close()
        seconds = time.perf_counter() - t0
        p1, sys1 = _process_cpu()
        process, system = p1 - p0, sys1 - sys0
        count = rival.count
    if len(_writer_cpu) != before + 1:
        raise RuntimeError("the writer thread's CPU was not recorded")
    gb = acts.numel() * 2 / 1e9
    serial, pool = _writer_cpu[-1], sum(_pool_cpu[pool_before:])
    other = max(0.0, process - caller - serial - pool - rival.cpu)  # torch's threads, the interpreter's, ...
    with actstore.ActStore.open(path) as stored:
        if stored.num_rows("decision") != n:
            raise RuntimeError(f"{path} holds {stored.num_rows('decision')} rows, not the {n} written")
    _rmtree(path.parent)
    return {"GB_per_s": gb / seconds, "seconds": seconds, "rival_per_s": count / seconds,
            "system_s_per_GB": system / gb,
            "cpu_s_per_GB": {"caller": caller / gb, "writer_thread": serial / gb, "pool": pool / gb,
                             "other": other / gb, "total": (caller + serial + pool) / gb}}


def raw_write_once(root: Path, u16_ND: np.ndarray, threads: int, file_bytes: int, *,
                   keep: bool = False, direct: bool = False) -> dict[str, Any]:
    """The baseline: the same bytes as plain files of ``file_bytes`` (a chunk's size) written by ``threads``
    threads, each to a temp file renamed into place as the store writes its chunks; no encoding, no checksums, no
    bookkeeping. ``keep``: leave the files (their page cache stays taken) and return their directory as ``dir``.
    ``direct``: written with ``O_DIRECT`` as ``direct_io`` stores write their chunks."""
    flat = np.ascontiguousarray(u16_ND).reshape(-1).view(np.uint8)
    pieces = [flat[i : i + file_bytes] for i in range(0, flat.size, file_bytes)]
    out = Path(tempfile.mkdtemp(dir=root))

    def work(k: int) -> None:
        for i in range(k, len(pieces), threads):
            tmp = out / f".{i}.tmp"
            if direct:
                if not _direct.write_file(tmp, [pieces[i]], durable=False):
                    raise RuntimeError(f"the filesystem of {out} refuses O_DIRECT")
                os.replace(tmp, out / str(i))
                continue
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view, done = memoryview(pieces[i]), 0
                while done < len(view):
                    done += os.write(fd, view[done:])
            finally:
                os.close(fd)
            os.replace(tmp, out / str(i))

    (p0, sys0), t0 = _process_cpu(), time.perf_counter()
    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - t0
    p1, sys1 = _process_cpu()
    gb = flat.size / 1e9
    res: dict[str, Any] = {"GB_per_s": gb / seconds, "seconds": seconds, "cpu_s_per_GB": (p1 - p0) / gb,
                           "system_s_per_GB": (sys1 - sys0) / gb}
    if keep:
        res["dir"] = str(out)
    else:
        _rmtree(out)
    return res


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _median_case(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds (each CPU figure on its own)."""
    out: dict[str, Any] = {k: statistics.median(s[k] for s in samples) for k in ("GB_per_s", "seconds", "rival_per_s",
                                                                          "system_s_per_GB")}
    out["cpu_s_per_GB"] = {k: statistics.median(s["cpu_s_per_GB"][k] for s in samples)
                           for k in samples[0]["cpu_s_per_GB"]}
    out["all_GB_per_s"] = [s["GB_per_s"] for s in samples]
    return out


def projection(cpu: dict[str, float], cores: int) -> float:
    """GB/s on ``cores`` cores from CPU seconds per GB: the serial writer thread runs at most one core's worth, and
    all the work shares ``cores`` (an upper bound: no GIL, memory-bandwidth or disk limit)."""
    return min(1 / cpu["writer_thread"], cores / cpu["total"])


# ------------------------------------------------------------------------------------------- the run
def run(cfg: WriterBenchConfig) -> dict[str, Any]:
    from benchmarks._data_gen import cached_rows

    cores = os.cpu_count() or 1
    if cfg.switch_interval_ms is not None:
        sys.setswitchinterval(cfg.switch_interval_ms / 1000)
    size = (4 if cfg.smoke else cfg.size_mib) << 20
    n = size // (D * 2)
    u16_ND = cached_rows(Path(cfg.data) / ("smoke" if cfg.smoke else ""), n)
    threads = cfg.threads or tuple(sorted({t for t in (1, 2, 4, 8, 16, 32, 64) if t <= cores} | {cores}))
    if cfg.smoke and not cfg.threads:
        threads = (min(2, cores),)
    append_rows = min(cfg.append_rows, n // 4) if cfg.smoke else cfg.append_rows
    rounds = 1 if cfg.smoke else cfg.rounds
    root = Path(cfg.work) if cfg.work else Path(cfg.data) / "writer_bench"
    root.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"rows": n, "d": D, "MiB": size >> 20, "append_rows": append_rows, "cores": cores,
                           "rounds": rounds, "nonfinite": cfg.nonfinite, "direct_io": cfg.direct_io,
                           "switch_interval_ms": sys.getswitchinterval() * 1000, "loadavg_start": os.getloadavg(),
                           "cases": {}}
    rival_alone = {m: _rival_rate(m, 0.3 if cfg.smoke else 1.0) for m in cfg.modes if m != "idle"}
    res["rival_alone_per_s"] = rival_alone
    chunk_bytes = 4096 * D * 2  # the default chunk_rows at d=2048: 16 MiB files
    with _thread_cpu():
        # the process's first writes: plain files, then the store (the plain files kept meanwhile, so that the
        # store does not reuse the page cache they freed)
        raw = raw_write_once(root, u16_ND, cores, chunk_bytes, keep=True, direct=cfg.direct_io)
        res["first_write"] = write_once(root, u16_ND, cfg.codecs[0], 0, append_rows, "idle", cfg.nonfinite,
                                        cfg.direct_io)
        res["first_write"]["codec"] = cfg.codecs[0]
        _rmtree(Path(raw.pop("dir")))
        res["first_raw_write"] = raw
        res["raw_write"] = {}
        for codec in cfg.codecs:
            for t in threads:
                write_once(root, u16_ND, codec, t, append_rows, "idle", cfg.nonfinite, cfg.direct_io)  # warm-up
                samples: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg.modes}
                raws = res["raw_write"].setdefault(str(t), [])
                for r in range(rounds):  # modes (and the plain-file baseline) interleaved, order rotated each round
                    order = list(cfg.modes[r % len(cfg.modes):]) + list(cfg.modes[: r % len(cfg.modes)])
                    for mode in order:
                        samples[mode].append(write_once(root, u16_ND, codec, t, append_rows, mode, cfg.nonfinite,
                                                        cfg.direct_io))
                    raws.append(raw_write_once(root, u16_ND, t, chunk_bytes, direct=cfg.direct_io))
                for mode, got in samples.items():
                    case = _median_case(got)
                    if mode != "idle":
                        rate = case["rival_per_s"]  # none at all in a very short write: not measured
                        case["rival_slowdown"] = rival_alone[mode] / rate if rate else None
                    res["cases"][f"{codec}/threads={t}/{mode}"] = {"codec": codec, "threads": t, "mode": mode, **case}
    if not cfg.work:
        _rmtree(root)
    res["projection"] = {}
    res["raw_write"] = {t: {"GB_per_s": statistics.median(r["GB_per_s"] for r in runs),
                            "system_s_per_GB": statistics.median(r["system_s_per_GB"] for r in runs),
                            "all_GB_per_s": [r["GB_per_s"] for r in runs]} for t, runs in res["raw_write"].items()}
    for case in res["cases"].values():
        case["vs_plain_files"] = case["GB_per_s"] / res["raw_write"][str(case["threads"])]["GB_per_s"]
    for codec in cfg.codecs if "idle" in cfg.modes else ():  # projected from the idle figures only
        idle = res["cases"][f"{codec}/threads={max(threads)}/idle"]["cpu_s_per_GB"]
        res["projection"][codec] = {"cores": cfg.project_cores, "GB_per_s": projection(idle, cfg.project_cores),
                                    "serial_bound_GB_per_s": 1 / idle["writer_thread"],
                                    f"here_{cores}_cores_GB_per_s": projection(idle, cores)}
    res["loadavg_end"] = os.getloadavg()
    return res


def report(res: dict[str, Any]) -> str:
    lines = [f"Writer ingest: {res['MiB']} MiB of bf16 rows (d={res['d']}) per write, appends of "
             f"{res['append_rows']} rows, {res['cores']} cores, medians of {res['rounds']} round(s); CPU s per GB "
             "by thread", "",
             "| codec | threads | rest of the process | GB/s | vs plain files | caller | writer thread | pool | total | "
             "other | system | rival slowed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in res["cases"].values():
        cpu = c["cpu_s_per_GB"]
        slowed = f"{c['rival_slowdown']:.2f}x" if c.get("rival_slowdown") else "-"
        lines.append(f"| {c['codec']} | {c['threads']} | {c['mode']} | {c['GB_per_s']:.2f} | {c['vs_plain_files']:.2f}x | "
                     f"{cpu['caller']:.2f} | {cpu['writer_thread']:.2f} | {cpu['pool']:.2f} | {cpu['total']:.2f} | "
                     f"{cpu['other']:.2f} | {c['system_s_per_GB']:.2f} | {slowed} |")
    lines += ["", f"Plain files of the same bytes (16 MiB each, temp file + rename, no encoding"
              f"{', O_DIRECT' if res['direct_io'] else ''}), interleaved: "
              + ", ".join(f"{t} thread(s) {r['GB_per_s']:.2f} GB/s ({r['system_s_per_GB']:.2f} system s per GB)"
                          for t, r in res["raw_write"].items())]
    f, fr = res["first_write"], res["first_raw_write"]
    lines += ["", f"First writes of the process: plain files {fr['GB_per_s']:.2f} GB/s ({fr['system_s_per_GB']:.2f} "
              f"system s per GB); then the store ({f['codec']}, default threads) {f['GB_per_s']:.2f} GB/s, "
              f"{f['cpu_s_per_GB']['total']:.2f} CPU s per GB (writer thread {f['cpu_s_per_GB']['writer_thread']:.2f}, "
              f"pool {f['cpu_s_per_GB']['pool']:.2f}; system {f['system_s_per_GB']:.2f})", ""]
    for codec, p in res["projection"].items():
        here = next(v for k, v in p.items() if k.startswith("here_"))
        lines.append(f"{codec}: the writer thread alone bounds ingest at {p['serial_bound_GB_per_s']:.2f} GB/s; projected "
                     f"{p['GB_per_s']:.2f} GB/s on {p['cores']} cores ({here:.2f} GB/s on the {res['cores']} here)")
    return "\n".join(lines)


def main(cfg: WriterBenchConfig) -> dict[str, Any]:
    res = run(cfg)
    text = report(res)
    print(text)
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(res, indent=1))
        Path(cfg.out).with_suffix(".md").write_text(text + "\n")
    return res


if __name__ == "__main__":
    import tyro

    main(tyro.cli(WriterBenchConfig))
