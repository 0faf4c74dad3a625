"""``python -m capture``: run a model over a stream of observations and capture its activations into a store.

``capture_run`` is a plain function (callable from Python); ``main`` is one ``tyro.cli`` line over it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import torch

from ._adapters import ModelSpec, load_callable, load_model
from ._errors import ModelSpecError
from ._recorder import Recorder, RecorderConfig
from ._reference import ReferencePi05
from ._sites import NO_STEP
from ._synthetic import Observation, SyntheticConfig, synthetic_batches

__all__ = ["capture_run", "main", "store_path"]


def store_path(output_dir: str, backend: str, auto_timestamp: bool, resume: bool) -> Path:
    """Where the store goes: ``output_dir`` itself if it ends in .zarr/.h5, else a file inside it.

    Inside a directory: ``<timestamp>.<ext>`` with ``auto_timestamp`` (with ``resume``: the newest such store),
    else ``capture.<ext>``.
    """
    out = Path(output_dir)
    if out.suffix in (".zarr", ".h5"):
        return out
    ext = "zarr" if backend == "zarr" else "h5"
    if not auto_timestamp:
        return out / f"capture.{ext}"
    if resume:
        runs = sorted(out.glob(f"*.{ext}"))
        if not runs:
            raise FileNotFoundError(f"--resume: no *.{ext} store in {str(out)!r} to resume")
        return runs[-1]
    return out / f"{time.strftime('%Y%m%d-%H%M%S')}.{ext}"


def _batches(batch_factory: str | None, cfg: SyntheticConfig, indices: list[int]) -> Iterator[Observation]:
    """The observations of the given global batch indices, in order."""
    if not indices:
        return
    if batch_factory is None:
        for i in indices:
            yield from synthetic_batches(cfg, i, i + 1)
        return
    wanted = set(indices)
    source: Iterable[Observation] = load_callable(batch_factory)(batch_size=cfg.batch_size, seed=cfg.seed)
    for i, obs in enumerate(source):
        if i > indices[-1]:
            return
        if i in wanted:
            yield obs


def resolve_part(part: str | None) -> tuple[int, int] | None:
    """``--part i/N``, or torchrun's RANK / WORLD_SIZE when the process runs under it with more than one rank."""
    if part is not None:
        from actstore._parts import parse_part

        return parse_part(part)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def capture_run(
    checkpoint_path: str | None = None,
    output_dir: str = "runs",
    layers: tuple[int, ...] = (6, 10, 14),
    roles: tuple[str, ...] = ("decision", "instruction"),
    batch_size: int = 8,
    max_batches: int = 8,
    num_steps: int = 10,
    model: Literal["reference", "transformers-pi0", "openpi", "lerobot", "factory"] = "reference",
    model_factory: str | None = None,
    batch_factory: str | None = None,
    backend: Literal["zarr", "hdf5"] = "zarr",
    codec: str = "lz4",
    seed: int = 0,
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    auto_timestamp: bool = True,
    resume: bool = False,
    progress_interval: float = 0.5,
    quiet: bool = False,
    part: str | None = None,
) -> Path:
    """Capture residual-stream activations of a pi0 / pi0.5 policy (or any model) into an actstore store.

    With no arguments: the built-in reference pi0.5 policy (random weights), synthetic observations (random images,
    LIBERO-style instructions), layers 6/10/14, roles decision + instruction, 8 batches of 8, into
    ./runs/<timestamp>.zarr.

    Args:
        checkpoint_path: Weights to load (reference: a state-dict file; transformers-pi0 / lerobot: a directory).
        output_dir: Directory of runs, or the store path itself when it ends in .zarr / .h5.
        layers: Decoder layer indices to capture.
        roles: Roles to capture: decision (expert action tokens, per step), instruction (prompt tokens of the
            PaliGemma layers), full (every non-pad prefix token), suffix (every expert token, per step).
        batch_size: Samples per batch.
        max_batches: Batches to capture in total (a resumed run continues up to this number).
        num_steps: Denoising steps per sample.
        model: Which model: reference, transformers-pi0, openpi, lerobot, or factory (see --model-factory).
        model_factory: module:function called as fn(checkpoint_path, seed) returning a model (implies --model factory).
        batch_factory: module:function called as fn(batch_size=, seed=) returning an iterable of Observation.
        backend: Store backend.
        codec: Store codec.
        seed: Seed of the random model and of the synthetic observations.
        device: Device to run the model on.
        dtype: Model parameter dtype.
        auto_timestamp: Name the store <output_dir>/<timestamp>.<ext> (else <output_dir>/capture.<ext>).
        resume: Continue the store's last committed batch (with auto_timestamp: the newest store in output_dir).
        progress_interval: Seconds between progress-bar refreshes.
        quiet: No progress bar and no summary table.
        part: "i/N": this process captures batches i, i+N, i+2N, ... of max_batches into part i of an N-part store
            (default under torchrun: RANK/WORLD_SIZE). Every part is resumable on its own; readers see one store.
    """
    import actstore  # imported late: the CLI's --help must work without touching the store

    if model_factory is not None:
        model = "factory"
    spec = ModelSpec(name=model, checkpoint_path=checkpoint_path, factory=model_factory, seed=seed, device=device,
                     dtype=dtype)
    if max_batches < 1 or batch_size < 1 or num_steps < 1:
        raise ModelSpecError(f"batch_size, max_batches and num_steps must be >= 1, got {batch_size}, "
                             f"{max_batches}, {num_steps}")
    net, adapter = load_model(spec)
    sites = adapter.sites(list(layers), list(roles))
    core = getattr(net, "config", None)
    syn = SyntheticConfig(batch_size=batch_size, seed=seed,
                          action_horizon=getattr(core, "action_horizon", getattr(core, "chunk_size", 10)))
    parts = resolve_part(part)
    if parts is not None and Path(output_dir).suffix != ".zarr":
        run_id = os.environ.get("TORCHELASTIC_RUN_ID")
        if not run_id or run_id == "none":
            raise ModelSpecError(f"--part {part or parts} needs one store path shared by all parts: pass "
                                 "--output-dir ending in .zarr (e.g. runs/job.zarr)")
        output_dir = str(Path(output_dir) / f"{run_id}.zarr")
    path = store_path(output_dir, backend, auto_timestamp, resume)
    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = {
        "model": {"name": spec.name, "adapter": adapter.name, "class": type(net).__name__,
                  "checkpoint_path": checkpoint_path, "random_weights": checkpoint_path is None,
                  "seed": seed, "dtype": dtype,
                  "config": dataclasses.asdict(net.config) if isinstance(net, ReferencePi05) else None},
        "capture": {"layers": list(layers), "roles": list(roles), "num_steps": num_steps, "batch_size": batch_size,
                    "sites": {s.role: adapter.layer_paths[adapter.roles[s.role].stack] for s in sites},
                    "stepped_roles": sorted({s.role for s in sites if s.stepped}), "no_step": NO_STEP,
                    "cond": "adarms" if adapter.cond_kwarg else None,
                    "source": batch_factory or "synthetic"},
    }
    # one transaction per batch: a crash or a failed batch never leaves half a batch committed
    writer = actstore.create(str(path), attrs=attrs, codec=codec, backend=backend, resume=resume, autocommit=False,
                             part=parts)
    mine = list(range(max_batches)) if parts is None else list(range(parts[0], max_batches, parts[1]))
    with writer:
        done = (writer.committed_progress or {}).get("batches", 0) if resume else 0
        rec_cfg = RecorderConfig(cond_kwarg=adapter.cond_kwarg)
        bar = _progress(len(mine), done, progress_interval, quiet)
        t0 = time.perf_counter()
        with Recorder(net, writer, sites, rec_cfg) as rec:
            for k, obs in enumerate(_batches(batch_factory, syn, mine[done:]), start=done):
                obs = obs.to(spec.device)
                with rec.batch(adapter.context(net, obs), progress={"batches": k + 1}):
                    adapter.run(net, obs, num_steps)
                if bar is not None:
                    dt = max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(f"{rec.rows_written / dt:,.0f} rows/s, {rec.bytes_written / 1e9:.3f} GB")
                    bar.update(1)
        if bar is not None:
            bar.close()
    if _torchrun_barrier() and not quiet:  # with parts, the summary covers the whole store
        _summary(path, time.perf_counter() - t0, rec.bytes_written)
    return path


def _torchrun_barrier() -> bool:
    """Under torchrun: wait for every rank (gloo) so that rank 0 summarises the finished store; True on the rank
    that should print."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or "MASTER_ADDR" not in os.environ:
        return True
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo")
    try:
        dist.barrier()
        return dist.get_rank() == 0
    finally:
        if owned:
            dist.destroy_process_group()


def _progress(total: int, initial: int, interval: float, quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="batch", mininterval=interval, desc="capture")


def _summary(path: Path, seconds: float, nbytes: int) -> None:
    from rich.console import Console

    import actstore
    from actstore._info import render_summary, summarize

    console = Console()
    with actstore.ActStore.open(str(path)) as store:
        console.print(render_summary(summarize(store)))
    console.print(f"captured {nbytes / 1e9:.3f} GB in {seconds:.1f} s into {path}")


def main() -> None:
    """Entry point of ``python -m capture``."""
    import tyro

    tyro.cli(capture_run)
