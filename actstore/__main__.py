"""``actstore`` / ``python -m actstore``: look at, plot, export, verify and read out a store from the shell.

    actstore info run.zarr [--json]
    actstore plot run.zarr --layer 14 --role decision [--kind all|norms|outliers|pca] [--out fig.png]
    actstore export run.zarr --to h5|zarr|npy|safetensors [--out PATH] [--layer 14] [--role decision] [--step 0 9]
    actstore lens run.zarr --layer 14 [--head action|vlm_lm_head|expert_lm_head] [--step 9]
    actstore verify run.zarr
    actstore shuffle run.zarr --out shuffled.zarr [--seed 0]
    actstore features run.zarr --sae sae.safetensors --layer 14 --role decision --name sae14 [--k 32]
    actstore dashboard run.zarr --features sae14 --out site/
    actstore --version

Each subcommand is a frozen dataclass handled by a plain function returning the exit status; ``SUBCOMMANDS`` maps
the name to both (add a subcommand by adding one entry). Errors print one line, ``actstore: error: ...``, on
stderr. Exit status: 0 success; 2 bad arguments (unparsable command line, or an option value or combination
refused before the store is read: :class:`~actstore.ConfigError`); 1 failure (no such store, no such layer in
it, corrupt data, ``verify`` found problems, an OS error). torch, zarr and matplotlib are imported only by the
subcommands that use them: ``--help``, ``--version`` and ``info`` start in a fraction of a second.

``lens`` and ``dashboard --lens`` need the capture package (shipped beside actstore): the model layouts, the lenses
and the rebuilding of the model a store was captured from live there, and only these two import it (lazily, through
its public API); without it they fail with one line and exit 1. Nothing else in actstore imports capture.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from . import __version__
from ._errors import ActStoreError

PROG = "actstore"

Pos = tyro.conf.Positional
StorePath = Annotated[str, Pos, tyro.conf.arg(metavar="STORE")]
"""A store path as the positional argument, named STORE in usage lines."""


@dataclass(frozen=True)
class Info:
    """Summarise a store: layers, roles, steps, rows, d, dtype, codec, size and compression ratio."""

    path: StorePath
    """Store to describe (a .zarr directory or a .h5 file)."""
    json: bool = False
    """Print machine-readable JSON instead of tables."""


@dataclass(frozen=True)
class Plot:
    """Write a PNG of one (layer, role): token norms per layer and per denoising step, outlier dimensions, PCA."""

    path: StorePath
    """Store to plot."""
    layer: str
    """Layer to plot (the norms panel shows every layer of the role)."""
    role: str = "decision"
    """Role to plot."""
    out: str | None = None
    """PNG to write (default: <store name>.<role>.<layer>.<kind>.png next to the store)."""
    kind: Literal["all", "norms", "outliers", "pca"] = "all"
    """Which figure: all four panels, or one group."""
    max_rows: int = 20_000
    """Rows sampled (deterministically) for the figure."""
    seed: int = 0
    """Seed of the row sample."""
    color_by: str | None = None
    """PCA colour: a row or samples column (default: step for stepped roles, else task when present)."""


@dataclass(frozen=True)
class Export:
    """Export to another backend (zarr <-> h5, whole store, bit-exact) or to npy / safetensors (selectable)."""

    path: StorePath
    """Store to export."""
    to: Literal["h5", "zarr", "npy", "safetensors"]
    """Target format: h5 / zarr (an actstore store), npy (a directory + manifest.json) or one safetensors file."""
    out: str | None = None
    """Output path (default: next to the store, same name, new suffix: .h5, .zarr, .npy/, .safetensors)."""
    layer: tuple[str, ...] | None = None
    """Layers to export (npy / safetensors; default: all)."""
    role: tuple[str, ...] | None = None
    """Roles to export (npy / safetensors; default: all)."""
    step: tuple[int, ...] | None = None
    """Denoising steps to export (npy / safetensors; roles without those steps are skipped)."""
    overwrite: bool = False
    """Replace an existing output."""
    progress: bool = True
    """Show a progress bar."""
    codec: Literal["lz4", "zstd", "bytesplit", "none"] | None = None
    """Re-encode a store conversion (h5 / zarr) with this codec: none reads fastest, zstd is smallest."""


@dataclass(frozen=True)
class Lens:
    """Read rows out through the model's final norm and a trained head (velocity lens / logit lens); needs the
    capture package (model layouts and lenses)."""

    path: StorePath
    """Store to read."""
    layer: str
    """Layer whose rows are read out."""
    head: Literal["action", "vlm_lm_head", "expert_lm_head"] = "action"
    """action: decision rows -> expert final norm (AdaRMS) -> action_out_proj; vlm_lm_head: instruction rows ->
    PaliGemma final norm -> lm_head (top-k); expert_lm_head is untrained and refused unless --allow-untrained."""
    role: str | None = None
    """Role (default: decision for expert heads, instruction for vlm_lm_head)."""
    step: tuple[int, ...] | None = None
    """Only these denoising steps."""
    sample: tuple[int, ...] | None = None
    """Only these samples."""
    model: Literal["reference", "transformers-pi0", "openpi", "lerobot", "factory"] | None = None
    """Model to load (default: the one recorded in the store's attrs)."""
    checkpoint_path: str | None = None
    """Weights (default: the store's recorded checkpoint_path)."""
    model_factory: str | None = None
    """module:function returning the model (implies --model factory)."""
    k: int = 5
    """Top-k tokens per row for vocabulary heads."""
    show: int = 12
    """Rows to print."""
    allow_untrained: bool = False
    """Decode through an untrained head anyway (its output means nothing; see the error message)."""
    out: str | None = None
    """Also write the full output to this .safetensors file."""


@dataclass(frozen=True)
class Verify:
    """Check a store's metadata, checksums and tables; exit 1 if problems are found."""

    path: StorePath
    """Store to verify."""


@dataclass(frozen=True)
class Shuffle:
    """Copy a store with every role's rows in one uniformly random order (out of core, resumable)."""

    path: StorePath
    """Store to shuffle."""
    out: str | None = None
    """Destination store (default: <name>.shuffled.zarr / .h5 next to the source)."""
    seed: int = 0
    """Seed of the permutation (the same seed gives the same order)."""
    bucket_mb: int = 512
    """Memory for one bucket of the permute pass, in MiB."""
    codec: Literal["lz4", "zstd", "bytesplit", "none"] | None = None
    """Codec of the destination (default: the source's)."""
    overwrite: bool = False
    """Replace an existing destination (and an unfinished shuffle's work directory)."""
    progress: bool = True
    """Show progress bars."""


@dataclass(frozen=True)
class Features:
    """Stream a (layer, role) through an SAE into a derived feature group (top examples, histograms, density by
    step and by task); resumable, on the GPU when there is one. Query it with store.features(name)."""

    path: StorePath
    """Store to read (a local .zarr directory or .h5 file; the group is written beside the captured arrays)."""
    sae: str
    """SAE weights (.safetensors / .npz with W_enc, W_dec, b_enc, b_dec, + threshold for JumpReLU)."""
    layer: str
    """Layer to encode."""
    role: str = "decision"
    """Role to encode."""
    name: str = "features"
    """Name of the feature group (store.features(name), actstore dashboard --features name)."""
    k: int | None = None
    """Active latents per row of a TopK SAE (required for TopK; JumpReLU uses its thresholds)."""
    kind: Literal["auto", "topk", "jumprelu"] = "auto"
    """SAE kind (auto: jumprelu when the file holds a non-zero threshold, else topk)."""
    top_k: int = 32
    """Top examples kept per feature."""
    batch_rows: int = 8192
    """Rows per SAE batch."""
    device: str | None = None
    """Device of the SAE (default: cuda when available, else cpu)."""
    overwrite: bool = False
    """Recompute an existing group."""
    resume: bool = True
    """Continue an interrupted pass from its checkpoint (--no-resume starts over)."""
    progress: bool = True
    """Show a progress bar."""


@dataclass(frozen=True)
class Dashboard:
    """Write a static site (open index.html; no server) of a feature group: a searchable feature list and per
    feature its histogram, density by step and by task, top examples and, with a model, the velocity it writes."""

    path: StorePath
    """Store holding the feature group."""
    features: str
    """Name of the feature group (actstore features --name)."""
    out: str | None = None
    """Folder to write (default: <store>.<features>.site next to the store)."""
    top: int = 16
    """Top examples per feature page."""
    max_features: int = 1000
    """Pages for at most this many features, the most often firing first."""
    lens: bool = False
    """Read each feature's decoder direction through the velocity lens with the store's recorded model (decision
    role; needs the capture package); implied by --model / --checkpoint-path / --model-factory."""
    model: Literal["reference", "transformers-pi0", "openpi", "lerobot", "factory"] | None = None
    """Model for the velocity lens (default: the one recorded in the store's attrs)."""
    checkpoint_path: str | None = None
    """Weights of that model (default: the store's recorded checkpoint_path)."""
    model_factory: str | None = None
    """module:function returning the model (implies --model factory)."""
    tokenizer: Literal["auto", "words", "ids"] = "auto"
    """Prompt tokens as words (capture's synthetic tokenizer), as ids, or auto (words for synthetic captures)."""
    overwrite: bool = False
    """Replace a dashboard written before."""
    progress: bool = True
    """Show a progress bar."""


def _layer(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def info(cmd: Info) -> int:
    from .read._reader import ActStore
    from .tools._info import render_summary, summarize

    with ActStore.open(cmd.path) as store:
        summary = summarize(store)
    if cmd.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        from rich.console import Console

        Console().print(render_summary(summary))
    return 0


def plot(cmd: Plot) -> int:
    from .tools._plot import plot_store

    src = Path(cmd.path)
    out = cmd.out or str(src.with_name(f"{src.stem}.{cmd.role}.{cmd.layer}.{cmd.kind}.png"))
    written = plot_store(cmd.path, _layer(cmd.layer), cmd.role, out, kind=cmd.kind, max_rows=cmd.max_rows,
                         seed=cmd.seed, color_by=cmd.color_by)
    print(written)
    return 0


def export(cmd: Export) -> int:
    from .tools._export import export as run_export

    src = Path(cmd.path.rstrip("/"))
    suffix = {"h5": ".h5", "zarr": ".zarr", "npy": ".npy", "safetensors": ".safetensors"}[cmd.to]
    out = cmd.out or str(src.with_suffix(suffix))
    if cmd.out is None and Path(out) == src:  # zarr -> zarr (a re-encode): never onto the source
        out = str(src.with_name(f"{src.stem}.{cmd.codec or 'copy'}{suffix}"))
    layers = None if cmd.layer is None else [_layer(x) for x in cmd.layer]
    written = run_export(cmd.path, cmd.to, out, layer=layers, role=None if cmd.role is None else list(cmd.role),
                         step=None if cmd.step is None else list(cmd.step), overwrite=cmd.overwrite,
                         progress=cmd.progress, codec=cmd.codec)
    print(written)
    return 0


class MissingDependencyError(ActStoreError, ImportError):
    """A subcommand needs a package that is not importable (``lens`` and ``dashboard --lens`` need capture)."""


def _capture(command: str) -> Any:
    """The capture package, imported only by the subcommands that read rows out through a model: it holds the model
    layouts and lenses and rebuilds the model a store was captured from (``capture.recorded_model``)."""
    try:
        import capture
    except ImportError as exc:
        raise MissingDependencyError(
            f"'{PROG} {command}' needs the capture package (shipped beside actstore; it holds the model layouts and "
            f"lenses), which is not importable here: {exc}") from None
    return capture


def _model(cap: Any, cmd: Lens | Dashboard, attrs: dict) -> Any:
    """The model named on the command line, else the one the store's attrs record."""
    return cap.recorded_model(attrs, name=cmd.model, checkpoint_path=cmd.checkpoint_path,
                              factory=cmd.model_factory)


def lens(cmd: Lens) -> int:
    from rich.console import Console
    from rich.table import Table

    from .read._reader import ActStore

    cap = _capture("lens")
    spec = cap.check_head(cmd.head, cmd.allow_untrained)  # refuse before loading a model
    role = cmd.role or ("instruction" if spec.stack == "vlm" else "decision")
    with ActStore.open(cmd.path) as store:
        model = _model(cap, cmd, store.attrs)
        layer = _layer(cmd.layer)
        step = None if cmd.step is None else list(cmd.step)
        sample = None if cmd.sample is None else list(cmd.sample)
        vocab = cmd.head != "action"
        if vocab:  # keep the top k per row only: (rows, vocab) logits can be huge
            top = cap.logit_lens(store, model, layer, sample, k=cmd.k, role=role, head=cmd.head, step=step,
                                 allow_untrained=cmd.allow_untrained)
            out, ids, vals, rows = top.logits, top.ids, top.logits, top.rows
        else:
            out = cap.velocity_lens(store, model, layer, step, sample=sample, role=role)
            rows = store.select(layer, role, step=step, sample=sample).rows()
    table = Table(title=f"{cmd.head} lens of {role} rows at layer {layer} ({len(out):,} rows)")
    for col in ("sample", "step", "position"):
        table.add_column(col, justify="right")
    if vocab:
        table.add_column(f"top {cmd.k} ids (logit)")
    else:
        table.add_column("|v|", justify="right")
        table.add_column("v[:6]")
    for i in range(min(cmd.show, len(out))):
        cells = [str(int(rows[c][i])) for c in ("sample", "step", "position")]
        if vocab:
            cells.append("  ".join(f"{int(t)} ({float(v):.2f})" for t, v in zip(ids[i], vals[i], strict=True)))
        else:
            v = out[i].float()
            cells += [f"{float(v.norm()):.3f}", " ".join(f"{float(x):+.3f}" for x in v[:6])]
        table.add_row(*cells)
    Console().print(table)
    if cmd.out:
        from safetensors.torch import save_file

        main = {"top_ids": ids, "top_logits": vals} if vocab else {"velocity": out.contiguous().cpu()}
        tensors = {**main, **{f"rows.{k}": torch_col(v) for k, v in rows.items()}}
        save_file(tensors, cmd.out, metadata={"head": cmd.head, "layer": str(layer), "role": role,
                                              "store": str(cmd.path)})
        print(cmd.out)
    return 0


def torch_col(values: object) -> object:
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))


def verify(cmd: Verify) -> int:
    from .tools._verify import verify as run_verify

    report = run_verify(cmd.path)
    for line in report.render():
        print(line)
    return 0 if report.ok else 1


def shuffle(cmd: Shuffle) -> int:
    from .tools._reshuffle import ShuffleConfig, shuffle_store

    src = Path(cmd.path.rstrip("/"))
    out = cmd.out or str(src.with_name(f"{src.stem}.shuffled{src.suffix or '.zarr'}"))
    cfg = ShuffleConfig(seed=cmd.seed, bucket_bytes=cmd.bucket_mb << 20, codec=cmd.codec, overwrite=cmd.overwrite,
                        progress=cmd.progress)
    print(shuffle_store(cmd.path, out, cfg))
    return 0


def features(cmd: Features) -> int:
    from ._errors import ConfigError, InvalidNameError
    from .read._reader import ActStore
    from .tools._features_pass import FeaturePassConfig, feature_pass

    if cmd.kind == "topk" and cmd.k is None:
        raise ConfigError("a TopK SAE needs --k (active latents per row); or pass --kind jumprelu")
    try:
        cfg = FeaturePassConfig(layer=_layer(cmd.layer), role=cmd.role, name=cmd.name, top_k=cmd.top_k,
                                batch_rows=cmd.batch_rows, device=cmd.device)
    except InvalidNameError as exc:  # a bad --name is a bad argument (exit 2)
        raise ConfigError(str(exc)) from None
    with ActStore.open(cmd.path) as store:
        out = feature_pass(store, cmd.sae, cfg, sae_kind=cmd.kind, k=cmd.k, overwrite=cmd.overwrite,
                           resume=cmd.resume, progress=cmd.progress)
    print(out)
    return 0


def dashboard(cmd: Dashboard) -> int:
    from .read._reader import ActStore
    from .tools.dashboard import DashboardConfig, write_dashboard

    cfg = DashboardConfig(top=cmd.top, max_features=cmd.max_features, tokenizer=cmd.tokenizer)
    src = Path(cmd.path.rstrip("/"))
    out = cmd.out or str(src.with_name(f"{src.name}.{cmd.features}.site"))
    with ActStore.open(cmd.path) as store:
        fs = store.features(cmd.features)
        velocity = None
        if cmd.lens or cmd.model is not None or cmd.checkpoint_path is not None or cmd.model_factory:
            cap = _capture("dashboard --lens")
            model = _model(cap, cmd, store.attrs)

            def velocity(fs: Any, f: int, k: int) -> Any:
                return cap.feature_velocity(fs, model, f, k)
        index = write_dashboard(fs, out, cfg, velocity=velocity, overwrite=cmd.overwrite, progress=cmd.progress)
    print(index)
    return 0


SUBCOMMANDS: dict[str, tuple[type, Callable[[Any], int]]] = {
    "info": (Info, info),
    "plot": (Plot, plot),
    "export": (Export, export),
    "lens": (Lens, lens),
    "verify": (Verify, verify),
    "shuffle": (Shuffle, shuffle),
    "features": (Features, features),
    "dashboard": (Dashboard, dashboard),
}
"""Subcommand name -> (its frozen dataclass of options, the function that runs it and returns the exit status)."""


class UsageError(ActStoreError, ValueError):
    """The command line could not be parsed (tyro's message, flattened to one line)."""


_RULE = re.compile(r"^[\s\-\u2500-\u257f]+$")  # a horizontal rule of tyro's error box (ASCII or box drawing)


def _one_line(rendered: str) -> str:
    """tyro's multi-line error box as one line: the title, then the body up to the 'For full helptext' part."""
    lines = [ln.strip().strip("\u2502\u256d\u256e\u2570\u256f|").strip() for ln in rendered.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return "invalid arguments"
    parts: list[str] = []
    for ln in lines[1:]:
        if ln.startswith("For full helptext") or ln.startswith("Argument helptext"):
            break
        if not _RULE.match(ln):
            parts.append(ln)
    title = lines[0].strip("\u2500\u256d\u256e\u2570\u256f- ")
    body = " ".join(" ".join(parts).split())
    if not body:
        return title.lower()
    return body if body.lower().startswith(title.lower()) else f"{title.lower()}: {body}"


def _parse(argv: list[str]) -> Any:
    """The subcommand's dataclass; a bad command line raises :class:`UsageError` with a one-line message."""
    names = {name: cls for name, (cls, _) in SUBCOMMANDS.items()}
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return tyro.extras.subcommand_cli_from_dict(
                names, args=argv, prog=PROG,
                description="Inspect, plot, export, verify and read out actstore activation stores.",
            )
    except SystemExit as exc:
        if exc.code in (0, None):  # --help
            sys.stderr.write(err.getvalue())
            raise
        sub = next((a for a in argv if a in SUBCOMMANDS), None)
        hint = f"; see '{PROG} {sub} --help'" if sub else f"; see '{PROG} --help'"
        raise UsageError(_one_line(err.getvalue()).rstrip(".") + hint) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``actstore`` command; returns the exit status (see the module docstring)."""
    from ._errors import ConfigError

    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] in (["--version"], ["-V"]):
        print(f"{PROG} {__version__}")
        return 0
    try:
        cmd = _parse(args)
        run = next(fn for cls, fn in SUBCOMMANDS.values() if type(cmd) is cls)
        return run(cmd)
    except (UsageError, ConfigError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (ActStoreError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
