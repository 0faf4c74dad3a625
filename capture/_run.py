"""One capture run in named steps: plan the output (and check a resume) before anything is loaded or created, load
the model, check its sites, open the writer, capture the batches (one transaction each), summarise.

``run(cfg)`` takes a whole ``RunConfig``; ``capture_run(**options)`` is the same with flat keywords named like the
CLI flags (``capture_run(output_dir="runs/demo.zarr", layers=(6,), num_steps=3)``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._cli_config import RunConfig, flag, is_url, store_suffix
from ._errors import CaptureConfigError, SiteError

if TYPE_CHECKING:
    from torch import nn

    from ._adapters import ModelAdapter
    from ._sites import Site
    from ._synthetic import Observation, SyntheticConfig

__all__ = ["RESUMABLE", "CaptureInterrupted", "Target", "capture_run", "plan_output", "resolve_part", "run",
           "store_path"]

RESUMABLE = frozenset({"max_batches", "device", "codec", "direct_io", "output_dir", "backend", "auto_timestamp",
                       "resume", "overwrite", "part", "progress_interval", "quiet"})
"""Options a resumed run may change; every other option must equal the one recorded in the store."""


class CaptureInterrupted(KeyboardInterrupt):
    """Ctrl-C during a capture: what was committed and how to continue."""

    def __init__(self, path: str, committed: int, total: int) -> None:
        super().__init__(f"interrupted: {committed} of {total} batches committed to {path}")
        self.path, self.committed, self.total = path, committed, total


@dataclass(frozen=True)
class Target:
    """Where the run writes, decided before anything is created."""

    path: str
    """The store (a local path or a URL)."""
    backend: str
    """zarr or hdf5."""
    part: tuple[int, int] | None
    """(i, N) when writing part i of an N-part store."""
    recorded: dict[str, Any] | None
    """The existing store's attrs when resuming one, else None."""

    @property
    def display(self) -> Path | str:
        """``Path`` for a local store, the URL string otherwise."""
        return self.path if is_url(self.path) else Path(self.path)


# -- step 1: the output, before anything is loaded or created ------------------------------------------------------

def store_path(output_dir: str, backend: str, auto_timestamp: bool, resume: bool) -> str:
    """Where the store goes: ``output_dir`` itself if it ends in .zarr / .h5, else a store inside it:
    ``<timestamp>.<ext>`` with ``auto_timestamp`` (with ``resume``: the newest such store), else ``capture.<ext>``.
    URLs (``s3://bucket/run.zarr``) are joined as text, never through ``Path`` (which would collapse ``//``)."""
    if store_suffix(output_dir) is not None:
        return output_dir.rstrip("/")
    base = output_dir.rstrip("/")
    ext = "zarr" if backend == "zarr" else "h5"
    if not auto_timestamp:
        return f"{base}/capture.{ext}"
    if resume:
        runs = sorted(_list_stores(base, ext))
        if not runs:
            raise CaptureConfigError(f"--resume: no *.{ext} store in {output_dir!r} to resume; pass --output-dir "
                                     f"naming the store (…/run.{ext})")
        return runs[-1]
    return f"{base}/{time.strftime('%Y%m%d-%H%M%S')}.{ext}"


def _list_stores(base: str, ext: str) -> list[str]:
    if not is_url(base):
        return [str(p) for p in Path(base).glob(f"*.{ext}")]
    import fsspec

    fs, root = fsspec.core.url_to_fs(base)
    protocol = base.split("://", 1)[0]
    return [f"{protocol}://{p}" for p in fs.glob(f"{root}/*.{ext}")]


def resolve_part(part: str | None) -> tuple[int, int] | None:
    """``--part i/N``, or torchrun's RANK / WORLD_SIZE when the process runs under it with more than one rank."""
    if part is not None:
        from actstore import parse_part

        return parse_part(part)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def plan_output(cfg: RunConfig) -> Target:
    """The store path, and for ``--resume`` the recorded config checked against this run's; refuses an existing
    store unless ``--resume`` or ``--overwrite``. Reads only; creates nothing."""
    from actstore import ActStore, part_path, store_exists

    out = cfg.output
    output_dir, parts = out.output_dir, resolve_part(out.part)
    if parts is not None and store_suffix(output_dir) != ".zarr":
        run_id = os.environ.get("TORCHELASTIC_RUN_ID")
        if not run_id or run_id == "none":
            raise CaptureConfigError(f"--part {out.part or f'{parts[0]}/{parts[1]}'} needs one store path shared by all parts: "
                                     "pass --output-dir ending in .zarr (e.g. runs/job.zarr)")
        output_dir = f"{output_dir.rstrip('/')}/{run_id}.zarr"
    backend = out.store_backend
    path = store_path(output_dir, backend, out.auto_timestamp, out.resume)
    own = part_path(path, parts[0]) if parts is not None else path  # parts share the root: check our own
    if store_exists(own, backend) and not (out.resume or out.overwrite):
        raise CaptureConfigError(f"store {own} already exists: pass --resume to continue it or --overwrite to "
                                 "replace it (Python: resume=True / overwrite=True)")
    if out.overwrite and store_exists(path, backend):
        _is_store(path)  # --overwrite deletes a store, never some other file or directory
    recorded = None
    if out.resume and store_exists(path, backend):
        with ActStore.open(path) as store:
            recorded = dict(store.attrs)
        check_resume(cfg, recorded, path)
    return Target(path=path, backend=backend, part=parts, recorded=recorded)


def _is_store(path: str) -> None:
    from actstore import ActStore, NotAStoreError

    try:
        ActStore.open(path).close()
    except NotAStoreError as e:
        raise CaptureConfigError(f"--overwrite: {path} exists and is not an actstore store ({e}); it is left "
                                 "alone: remove it yourself or pick another --output-dir") from None


def options_of(cfg: RunConfig) -> dict[str, Any]:
    """The options recorded in the store (``attrs["capture"]["options"]``) and compared on ``--resume``."""
    return {k: v for k, v in cfg.flat().items() if k not in RESUMABLE}


def _legacy_options(attrs: dict[str, Any]) -> dict[str, Any]:
    """The comparable options of a store written before ``options`` were recorded."""
    model, cap = attrs.get("model") or {}, attrs.get("capture") or {}
    old = {"model": model.get("name"), "checkpoint_path": model.get("checkpoint_path"), "seed": model.get("seed"),
           "dtype": model.get("dtype"), "layers": cap.get("layers"), "roles": cap.get("roles"),
           "num_steps": cap.get("num_steps"), "batch_size": cap.get("batch_size")}
    if "source" in cap:
        old["batch_factory"] = None if cap["source"] == "synthetic" else cap["source"]
    return {k: v for k, v in old.items() if k in model or k in cap or k == "batch_factory"}


def check_resume(cfg: RunConfig, attrs: dict[str, Any], path: str) -> None:
    """Refuse to continue a store whose recorded options differ from this run's, naming each differing flag."""
    cap = attrs.get("capture") if isinstance(attrs.get("capture"), dict) else {}
    recorded = cap.get("options") if isinstance(cap.get("options"), dict) else _legacy_options(attrs)
    if cfg.model.model_factory is not None and "options" not in cap:
        recorded.pop("model", None)  # old stores record name "factory" where the flag said "reference"
    now = options_of(cfg)
    diff = [f"{flag(k)} {_show(now.get(k))} (recorded: {_show(v)})" for k, v in sorted(recorded.items())
            if k in now and _norm(now[k]) != _norm(v)]
    if diff:
        raise CaptureConfigError(
            f"--resume: {path} was captured with other options: {'; '.join(diff)}. Pass the recorded values to "
            f"continue it, or capture into a new store (another --output-dir, or --overwrite); only "
            f"{', '.join(flag(k) for k in sorted(RESUMABLE - {'resume', 'overwrite'}))} may change")


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


# -- step 2: the model and its sites ---------------------------------------------------------------------------------

def load(cfg: RunConfig) -> tuple[nn.Module, ModelAdapter, str]:
    """Build the model, pick its adapter (decoder layers found when ``--layer-path`` is not given); returns the
    device it runs on too."""
    import torch

    from ._adapters import ModelSpec, adapter_for, load_model
    from ._hf import find_layer_path

    m = cfg.model
    device = ("cuda" if torch.cuda.is_available() else "cpu") if m.device == "auto" else m.device
    factory = "capture._hf:causal_lm" if m.name == "hf" else m.model_factory
    spec = ModelSpec(name="factory" if factory else m.name, checkpoint_path=m.checkpoint_path, factory=factory,
                     layer_path=m.layer_path or "model.layers.{i}", seed=cfg.seed, device=device, dtype=m.dtype)
    net, adapter = load_model(spec)
    if adapter.name == "decoder" and m.layer_path is None:
        adapter = adapter_for(net, find_layer_path(net))
    return net, adapter, device


def check_sites(net: nn.Module, adapter: ModelAdapter, cfg: RunConfig) -> list[Site]:
    """The (layer, role) sites, each module checked to exist, with the valid layers named when one does not."""
    sites = adapter.sites(list(cfg.capture.layers), list(cfg.capture.roles))
    for s in sites:
        try:
            net.get_submodule(s.path)
        except AttributeError:
            raise SiteError(f"--layers {s.layer}: no module {s.path!r} in {type(net).__name__}; "
                            f"{_valid_layers(net, s.path)}") from None
    return sites


def _valid_layers(net: nn.Module, path: str) -> str:
    parent = path.rsplit(".", 1)[0]
    try:
        n = len(net.get_submodule(parent))  # type: ignore[arg-type]
    except (AttributeError, TypeError):
        return f"{parent!r} does not exist: pass --layer-path naming the decoder layers, e.g. transformer.h.{{i}}"
    return f"layers are 0..{n - 1}"


def run_attrs(cfg: RunConfig, net: nn.Module, adapter: ModelAdapter, sites: list[Site]) -> dict[str, Any]:
    """The store's attrs: the model, the capture (with every option a resume must match) and where sites live."""
    from ._reference import ReferencePi05
    from ._sites import NO_STEP

    m = cfg.model
    return {
        "model": {"name": m.name, "adapter": adapter.name, "class": type(net).__name__,
                  "checkpoint_path": m.checkpoint_path, "random_weights": m.checkpoint_path is None,
                  "factory": m.model_factory, "seed": cfg.seed, "dtype": m.dtype,
                  "config": dataclasses.asdict(net.config) if isinstance(net, ReferencePi05) else None},
        "capture": {"layers": list(cfg.capture.layers), "roles": list(cfg.capture.roles),
                    "num_steps": cfg.capture.num_steps, "batch_size": cfg.inputs.batch_size,
                    "sites": {s.role: adapter.layer_paths[adapter.roles[s.role].stack] for s in sites},
                    "stepped_roles": sorted({s.role for s in sites if s.stepped}), "no_step": NO_STEP,
                    "cond": "adarms" if adapter.cond_kwarg else None,
                    "source": cfg.inputs.batch_factory or "synthetic", "options": options_of(cfg)},
    }


# -- step 3: the observations -----------------------------------------------------------------------------------------

def batches(cfg: RunConfig, syn: SyntheticConfig, indices: list[int]) -> Iterator[Observation]:
    """The observations of the given global batch indices, in order."""
    from ._adapters import load_callable
    from ._synthetic import synthetic_batches

    if not indices:
        return
    if cfg.inputs.batch_factory is None:
        for i in indices:
            yield from synthetic_batches(syn, i, i + 1)
        return
    wanted = set(indices)
    source: Iterable[Observation] = load_callable(cfg.inputs.batch_factory)(batch_size=syn.batch_size, seed=syn.seed)
    for i, obs in enumerate(source):
        if i > indices[-1]:
            return
        if i in wanted:
            yield obs


# -- step 4: capture ----------------------------------------------------------------------------------------------------

def run(cfg: RunConfig) -> Path | str:
    """Capture as ``cfg`` says; returns the store's path (a ``Path``, or the URL string for object storage)."""
    import actstore

    from ._recorder import Recorder, RecorderConfig
    from ._synthetic import SyntheticConfig

    target = plan_output(cfg)
    source = _dataset_source(cfg)  # a bad --dataset fails before the model loads
    net, adapter, device = load(cfg)
    sites = check_sites(net, adapter, cfg)
    core = getattr(net, "config", None)
    syn = SyntheticConfig(batch_size=cfg.inputs.batch_size, seed=cfg.seed,
                          action_horizon=getattr(core, "action_horizon", getattr(core, "chunk_size", 10)))
    prepare = _prepare(cfg, adapter)
    if not is_url(target.path):
        Path(target.path).parent.mkdir(parents=True, exist_ok=True)
    # one transaction per batch: a crash or a failed batch never leaves half a batch committed
    attrs = run_attrs(cfg, net, adapter, sites)
    if source is not None:
        from ._dataset import ModelInputs

        source.inputs = ModelInputs.of(net)
        attrs["capture"].update(source="dataset", dataset=source.describe())
    writer = actstore.create(target.path, attrs=attrs, codec=cfg.output.codec, direct_io=cfg.output.direct_io,
                             backend=target.backend, resume=cfg.output.resume, overwrite=cfg.output.overwrite,
                             autocommit=False, part=target.part)
    total = _total_batches(cfg, source)
    mine = list(range(total)) if target.part is None else list(range(target.part[0], total, target.part[1]))
    done = (writer.committed_progress or {}).get("batches", 0) if cfg.output.resume else 0
    committed = done
    t0 = time.perf_counter()
    bar = _progress(len(mine), done, cfg.progress_interval, cfg.quiet)
    try:
        with writer, Recorder(net, writer, sites, RecorderConfig(cond_kwarg=adapter.cond_kwarg)) as rec:
            todo = mine[done:]
            stream = (source.batch(k) for k in todo) if source is not None else batches(cfg, syn, todo)
            for k, obs in enumerate(stream, start=done):
                obs = prepare(obs).to(device)
                with rec.batch(adapter.context(net, obs), progress={"batches": k + 1}):
                    adapter.run(net, obs, cfg.capture.num_steps)
                committed = k + 1
                if bar is not None:
                    dt = max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(f"{rec.rows_written / dt:,.0f} rows/s, {rec.bytes_written / 1e9:.3f} GB")
                    bar.update(1)
    except KeyboardInterrupt:
        raise CaptureInterrupted(target.path, committed, len(mine)) from None
    finally:
        if bar is not None:
            bar.close()
    if _torchrun_barrier() and not cfg.quiet:  # with parts, the summary covers the whole store
        _summary(target.path, time.perf_counter() - t0, rec.bytes_written)
    return target.display


def _dataset_source(cfg: RunConfig):
    """The ``--dataset`` frames as batches (opened and checked here; the model's input shapes are set after it
    loads), or None for synthetic / factory observations."""
    if cfg.data.dataset is None:
        return None
    from ._dataset import DatasetSource

    source = DatasetSource(cfg.data, batch_size=cfg.inputs.batch_size, seed=cfg.seed)
    if len(source) == 0:
        raise CaptureConfigError(f"--dataset {cfg.data.dataset!r}: the selection (--episodes {cfg.data.episodes}, "
                                 f"--frame-stride {cfg.data.frame_stride}) holds no frame")
    return source


def _total_batches(cfg: RunConfig, source: Any) -> int:
    """--max-batches, else every batch of the dataset's selection (at most that), else 8 synthetic batches."""
    if source is None:
        return 8 if cfg.inputs.max_batches is None else cfg.inputs.max_batches
    return source.num_batches if cfg.inputs.max_batches is None else min(cfg.inputs.max_batches, source.num_batches)


def _prepare(cfg: RunConfig, adapter: ModelAdapter):
    """Per-batch input preparation: an hf model's own tokenizer re-tokenizes the prompts."""
    if cfg.model.name != "hf" or adapter.name != "decoder":
        return lambda obs: obs
    from ._hf import load_tokenizer, retokenize

    tok = load_tokenizer(cfg.model.checkpoint_path)
    if tok is None:
        return lambda obs: obs
    return lambda obs: retokenize(obs, tok, max_len=512)


def capture_run(config: RunConfig | None = None, **options: Any) -> Path | str:
    """``run`` with flat keywords named like the CLI flags (``capture_run(output_dir="x.zarr", num_steps=3)``), or
    a whole ``RunConfig``. See ``python -m capture --help`` for every option."""
    if config is not None and options:
        raise CaptureConfigError("pass a RunConfig or keyword options, not both")
    return run(config if config is not None else RunConfig.from_flat(**options))


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


def _summary(path: str, seconds: float, nbytes: int) -> None:
    from rich.console import Console

    import actstore
    from actstore import render_summary, summarize

    console = Console()
    with actstore.ActStore.open(path) as store:
        console.print(render_summary(summarize(store)))
    console.print(f"captured {nbytes / 1e9:.3f} GB in {seconds:.1f} s into {path}")
