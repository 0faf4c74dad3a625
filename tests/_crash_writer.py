"""A deterministic pi0-like capture that the crash and fault tests run in a subprocess and kill.

Every batch ``b`` of a run is a pure function of ``(seed, b)`` (:func:`batch`), so a test can tell whether the
committed rows of a killed store are exactly the first ``k`` batches. The writer uses ``autocommit=False`` and
``commit_interval_s=0``, calls ``commit({"batches": b + 1})`` after every batch and resumes from
``committed_progress["batches"]``, as ``capture.Recorder`` does.

Modes (``python tests/_crash_writer.py MODE ...``):

- ``write PATH``: write (or resume) up to ``--batches``; prints ``committed <k>`` after each batch. ``--slow``
  sleeps per batch; SIGTERM stops after the current batch and closes cleanly; SIGINT raises
  ``KeyboardInterrupt`` wherever it lands (exit 130). ``--fsize`` sets ``RLIMIT_FSIZE`` (SIGXFSZ ignored) once the
  store exists; a writer failure prints ``failed <type> <cause type> <errno>`` and exits 3.
- ``killloop DIR``: imports once, then forks one writer child per kill (a fresh interpreter would spend ~3 s
  importing torch each time). Each child resumes the chain's store and dies by SIGKILL, either after a seeded
  random delay or at a seeded kill point inside the write path (``--crash-at`` in ``write`` mode does the same
  once); after each kill the store is copied to ``DIR/snap-<i>`` and described in ``DIR/log.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import actstore
from actstore.storage._backend import ZarrDirBackend

SAMPLES_PER_BATCH = 3
STEPS = 3
HORIZON = 4
PROMPT_LEN = 6
LAYERS = (6, 14)
D = 32
D_COND = 16
CONFIG = {"chunk_rows": 64, "block_rows": 16, "autocommit": False, "commit_interval_s": 0.0, "threads": 2}

KILL_KINDS = ("chunk", "meta", "root")
"""Which atomic write a kill point hits: a chunk file, an array's zarr.json (row count), the root commit record."""
KILL_MODES = ("before", "torn", "after")
"""Kill just before the write, after writing half of its temp file (never renamed), or right after the rename."""


def _bf16(x: np.ndarray) -> torch.Tensor:
    bits = (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return torch.from_numpy(bits).view(torch.bfloat16)


def batch(seed: int, b: int, d: int = D) -> dict[str, Any]:
    """Everything batch ``b`` appends: samples, instruction rows, decision rows per step, adarms cond."""
    rng = np.random.default_rng([seed, b])
    ids = np.arange(b * SAMPLES_PER_BATCH, (b + 1) * SAMPLES_PER_BATCH, dtype=np.int64)
    lengths = rng.integers(1, PROMPT_LEN + 1, size=ids.size)
    mask = np.arange(PROMPT_LEN)[None, :] < lengths[:, None]
    s_i, p_i = np.nonzero(mask)
    ins_rows = {"sample": ids[s_i], "step": np.full(s_i.size, actstore.NO_STEP), "position": p_i.astype(np.int64)}
    out: dict[str, Any] = {
        "samples": {"sample": ids, "prompt": [f"task {int(i)} seed {seed}" for i in ids], "instruction_mask": mask,
                    "episode": ids // 2},
        "instruction": (ins_rows, {layer: _bf16(rng.standard_normal((s_i.size, d))) for layer in LAYERS}),
        "decision": [],
        "cond": [],
    }
    n = ids.size * HORIZON
    for t in range(STEPS):
        rows = {"sample": np.repeat(ids, HORIZON), "step": np.full(n, t), "position": np.tile(np.arange(HORIZON), ids.size)}
        acts = {layer: _bf16(rng.standard_normal((n, d)) * (layer + 1)) for layer in LAYERS}
        out["decision"].append((rows, acts))
        out["cond"].append(({"sample": ids, "step": np.full(ids.size, t)}, rng.standard_normal((ids.size, D_COND)).astype(np.float32)))
    return out


def append_batch(w: actstore.StoreWriter, data: dict[str, Any]) -> None:
    s = data["samples"]
    w.append_samples(s["sample"], prompt=s["prompt"], instruction_mask=s["instruction_mask"], episode=s["episode"])
    w.append("instruction", rows=data["instruction"][0], acts=data["instruction"][1])
    for (rows, acts), (crow, cond) in zip(data["decision"], data["cond"], strict=True):
        w.append("decision", rows=rows, acts=acts)
        w.append_cond("adarms", rows=crow, acts=cond)


def expected(seed: int, batches: int, d: int = D) -> dict[str, Any]:
    """What a store holding exactly the first ``batches`` batches contains, as numpy (bf16 as uint16 bits)."""
    parts = [batch(seed, b, d) for b in range(batches)]
    exp: dict[str, Any] = {"batches": batches}

    def cat(xs: list[np.ndarray], empty: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.concatenate(xs) if xs else np.zeros(empty, dtype=dtype)

    for role in ("instruction", "decision"):
        pairs = [p["instruction"] for p in parts] if role == "instruction" else [x for p in parts for x in p["decision"]]
        exp[("rows", role)] = {c: cat([r[c] for r, _ in pairs], (0,), np.int64) for c in ("sample", "step", "position")}
        for layer in LAYERS:
            exp[(role, layer)] = cat([a[layer].view(torch.uint16).numpy() for _, a in pairs], (0, d), np.uint16)
    conds = [x for p in parts for x in p["cond"]]
    exp["cond_rows"] = {c: cat([r[c] for r, _ in conds], (0,), np.int64) for c in ("sample", "step")}
    exp["cond"] = cat([a for _, a in conds], (0, D_COND), np.float32)
    exp["sample"] = cat([p["samples"]["sample"] for p in parts], (0,), np.int64)
    exp["episode"] = cat([p["samples"]["episode"] for p in parts], (0,), np.int64)
    exp["instruction_mask"] = cat([p["samples"]["instruction_mask"] for p in parts], (0, PROMPT_LEN), bool)
    exp["prompt"] = [t for p in parts for t in p["samples"]["prompt"]]
    return exp


# ------------------------------------------------------------------------------------------- kill points


def install_kill_point(kind: str, n: int, mode: str) -> None:
    """SIGKILL this process at the ``n``-th atomic write of ``kind`` (see ``KILL_KINDS`` / ``KILL_MODES``)."""
    orig = ZarrDirBackend._put
    lock = threading.Lock()
    seen = [0]

    def classify(rel: str) -> str:
        return "root" if rel == "zarr.json" else "meta" if rel.endswith("zarr.json") else "chunk"

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)

    def wrapped(self: ZarrDirBackend, rel: str, data: bytes | list, *, durable: bool) -> None:
        if not isinstance(data, bytes):  # chunks arrive as a list of buffers written back to back
            data = b"".join(bytes(memoryview(p).cast("B")) for p in data)
        if classify(rel) == kind:
            with lock:
                seen[0] += 1
                hit = seen[0] == n
            if hit and mode == "before":
                die()
            if hit and mode == "torn":
                target = self.root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                (target.parent / f".{target.name}.torn.tmp").write_bytes(data[: len(data) // 2])
                die()
            orig(self, rel, data, durable=durable)
            if hit:
                die()
            return
        orig(self, rel, data, durable=durable)

    ZarrDirBackend._put = wrapped  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------------ write


def write(path: str, seed: int, batches: int, *, backend: str | None = None, slow: float = 0.0,
          fsize: int | None = None, d: int = D, on_batch: Any = None) -> int:
    """Write or resume the run up to ``batches``; return the batches committed when it stops."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with actstore.create(path, attrs={"run": {"seed": seed}}, backend=backend, resume=True, **CONFIG) as w:
        done = int((w.committed_progress or {}).get("batches", 0))
        if fsize is not None:
            w.flush()
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))
        for b in range(done, batches):
            if stop.is_set():
                break
            append_batch(w, batch(seed, b, d))
            w.commit({"batches": b + 1})
            done = b + 1
            print(f"committed {done}", flush=True)
            if on_batch is not None:
                on_batch(done)
            if slow:
                time.sleep(slow)
    return done


def _child(path: str, seed: int, batches: int, kill: dict[str, Any]) -> None:
    """Body of a forked writer child: never returns."""
    code = 0
    try:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the child exits with os._exit
        if kill["how"] == "point":
            install_kill_point(kill["kind"], kill["n"], kill["mode"])
        write(path, seed, batches)
    except BaseException as exc:  # noqa: BLE001 - reported through the exit code
        sys.stderr.write(f"child failed: {exc!r}\n")
        code = 1
    os._exit(code)


def killloop(out: Path, seed: int, kills: int, batches: int, chains: int) -> None:
    """Fork writer children and SIGKILL them, snapshotting the store after each kill; see the module doc."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    log: dict[str, Any] = {"seed": seed, "batches": batches, "snaps": [], "chains": []}

    def run_child(path: str, kill: dict[str, Any], delay: float | None) -> tuple[int, float]:
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(path, seed, batches, kill)
        if delay is not None:
            time.sleep(delay)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        return status, time.monotonic() - t0

    ref = str(out / "reference.zarr")
    status, full = run_child(ref, {"how": "none"}, None)
    assert os.waitstatus_to_exitcode(status) == 0, "the uninterrupted reference run failed"
    log["reference"] = {"path": ref, "seconds": full}
    per_chain = -(-kills // chains)
    i = 0
    for c in range(chains):
        path = str(out / f"chain-{c}.zarr")
        for _ in range(per_chain):
            if i >= kills:
                break
            if i == 0:  # the first commit that declares the roles, torn half-way
                kill, delay = {"how": "point", "kind": "root", "n": 2, "mode": "torn"}, None
            elif i % 2 == 0:  # a random moment: appends, encoding, chunk writes, commits, resume
                kill, delay = {"how": "delay"}, rng.uniform(0.0, full * 0.35)
            else:
                kind, mode = rng.choice(KILL_KINDS), rng.choice(KILL_MODES)
                n = rng.randint(1, {"chunk": 60, "meta": 60, "root": 12}[kind])
                kill, delay = {"how": "point", "kind": kind, "n": n, "mode": mode}, None
            status, secs = run_child(path, kill, delay)
            snap = out / f"snap-{i}"
            if os.path.exists(path):
                shutil.copytree(path, snap)
            log["snaps"].append({"i": i, "chain": c, "path": str(snap), "kill": kill, "delay": delay,
                                 "exit": os.waitstatus_to_exitcode(status), "seconds": secs})
            i += 1
        status, _ = run_child(path, {"how": "none"}, None)  # resume to completion
        log["chains"].append({"path": path, "exit": os.waitstatus_to_exitcode(status)})
    (out / "log.json").write_text(json.dumps(log, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["write", "killloop"])
    p.add_argument("path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--backend", default=None)
    p.add_argument("--slow", type=float, default=0.0)
    p.add_argument("--fsize", type=int, default=None)
    p.add_argument("--d", type=int, default=D)
    p.add_argument("--kills", type=int, default=30)
    p.add_argument("--chains", type=int, default=5)
    p.add_argument("--crash-at", default=None, help="KIND:N:MODE, e.g. chunk:3:torn")
    args = p.parse_args(argv)
    if args.mode == "killloop":
        killloop(Path(args.path), args.seed, args.kills, args.batches, args.chains)
        return 0
    if args.crash_at:
        kind, n, mode = args.crash_at.split(":")
        install_kill_point(kind, int(n), mode)
    try:
        done = write(args.path, args.seed, args.batches, backend=args.backend, slow=args.slow, fsize=args.fsize, d=args.d)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130
    except actstore.WriterFailedError as exc:
        cause = exc.__cause__
        print(f"failed {type(exc).__name__} {type(cause).__name__} {getattr(cause, 'errno', None)}", flush=True)
        print(f"message {exc}", flush=True)
        return 3
    print(f"closed {done}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
