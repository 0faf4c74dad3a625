"""Export a store, streamed chunk by chunk: to another actstore backend (Zarr <-> HDF5, bit-exact), to ``.npy``
files with a JSON manifest, or to one ``.safetensors`` file.

- ``zarr`` / ``h5``: a full conversion through :func:`actstore.create`: every role, layer, row table, conditioning,
  sample table (prompts, prompt ids, masks), the attrs, the layout (codec, chunk and block rows) and the commit
  progress. Values are copied as storage bits (bf16 as its uint16 bits), so the result is bit-exact.
- ``npy``: a directory with ``{role}.{layer}.npy`` (N, d) per selected (layer, role), ``{role}.rows.npy`` (N, C)
  int64, ``cond.{name}.npy`` / ``cond.{name}.rows.npy`` and ``manifest.json`` (columns, dtypes, the filter, the
  source's metadata). ``.npy`` has no bfloat16, so **bf16 is written as its uint16 bits** and the manifest says
  ``"dtype": "bfloat16", "stored_as": "uint16"``; read it back with ``torch.from_numpy(a).view(torch.bfloat16)``.
- ``safetensors``: one file with tensors ``acts.{role}.{layer}`` in their own dtype (bf16 native),
  ``rows.{role}.{column}`` (int64, one per column), ``cond.{name}`` and ``cond.{name}.{sample,step}``;
  ``__metadata__`` holds ``actstore`` (the source's metadata JSON) and ``filter`` (JSON). The file is written
  tensor by tensor, never holding more than ``chunk_rows`` rows in memory.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ConfigError, StoreExistsError, UnknownKeyError
from ..format._format import DTYPES, dtype_name, from_storage, to_storage
from ..read._reader import ActStore
from ..read._view import ActView

__all__ = ["FORMATS", "convert", "export"]

FORMATS: tuple[str, ...] = ("zarr", "h5", "npy", "safetensors")

_ST_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64"}


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", unit_scale=True, disable=not progress, leave=False)


def _ranges(n: int, step: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n, step):
        yield a, min(n, a + step)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise StoreExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")


# ------------------------------------------------------------------------------------------ store conversion
def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, backend: str | None = None,
            overwrite: bool = False, progress: bool = False, codec: str | None = None) -> Path:
    """Copy the store at ``src`` into a new store at ``dst`` (backend from ``dst``'s suffix unless given), bit-exact;
    ``codec`` re-encodes the blocks (e.g. ``none`` for the fastest training reads) without changing a value."""
    import actstore

    dst = Path(dst)
    if dst.resolve() == Path(src).resolve():
        raise ConfigError(f"cannot convert {src} onto itself; give another output path")
    with ActStore.open(src) as store:
        layout = store.record.layout
        spec = store.record.samples
        same = codec is None or codec == layout.codec
        config = actstore.StoreConfig(codec=layout.codec if same else codec, chunk_rows=layout.chunk_rows,
                                      block_rows=layout.block_rows if same else None, autocommit=False,
                                      max_prompt_bytes=(spec.prompt_bytes if spec else None) or 1024)
        step = config.chunk_rows
        with actstore.create(dst, attrs=store.attrs, config=config, backend=backend, overwrite=overwrite) as w:
            if store.num_samples:
                table = store.samples()
                for a, b in _ranges(store.num_samples, step):
                    extra = {c: table[c][a:b] for c in (spec.columns if spec else ()) if c != "sample"}
                    kw: dict[str, Any] = {k: table[k][a:b] for k in ("prompt_ids", "instruction_mask") if k in table}
                    if "prompt" in table:
                        kw["prompt"] = table["prompt"][a:b]
                    w.append_samples(table["sample"][a:b], **kw, **extra)
            for name in store.conds:
                rows = store.cond_rows(name)
                values = store.cond(name)
                for a, b in _ranges(len(rows["sample"]), step):
                    w.append_cond(name, {k: v[a:b] for k, v in rows.items()}, values[a:b].clone())
            for role in store.roles:
                n = store.num_rows(role)
                table = store.rows(role)
                views = {layer: store.view(layer, role) for layer in store.layers_of(role)}
                with _bar(n, f"{role}", progress) as bar:
                    for a, b in _ranges(n, step):
                        w.append(role, {k: v[a:b] for k, v in table.items()},
                                 {layer: v[a:b] for layer, v in views.items()})
                        bar.update(b - a)
            w.commit(store.commit.get("progress"))
    return dst


# ------------------------------------------------------------------------------------------ selections
def _select(store: ActStore, layer: list[int | str] | None, role: list[str] | None,
            step: list[int] | None) -> list[tuple[str, list[ActView]]]:
    roles = role or store.roles
    for r in roles:
        if r not in store.roles:
            raise UnknownKeyError(f"no role {r!r} in store {store.path}; roles are {store.roles}")
    chosen = []
    for r in roles:
        layers = store.layers_of(r) if layer is None else [x for x in layer if str(x) in map(str, store.layers_of(r))]
        if not layers:
            continue
        if step is not None:
            have = store.steps_of(r)
            if not set(step) & set(have):
                if role is not None:
                    raise UnknownKeyError(f"role {r!r} has no step in {step}; its steps are {have}")
                continue
            views = [store.select(x, r, step=[s for s in step if s in have]) for x in layers]
        else:
            views = [store.view(x, r) for x in layers]
        chosen.append((r, views))
    if layer is not None:
        every = {str(x) for _, vs in chosen for x in (v.layer for v in vs)}
        missing = [x for x in layer if str(x) not in every]
        if missing:
            raise UnknownKeyError(f"no layer {missing[0]!r} in the selected roles of {store.path}; layers are {store.layers}")
    if not chosen:
        raise UnknownKeyError(f"nothing in {store.path} matches layer={layer}, role={role}, step={step}")
    return chosen


def _chunks(view: ActView, step: int) -> Iterator[np.ndarray]:
    for a, b in _ranges(len(view), step):
        yield view.numpy(slice(a, b))


def _manifest(store: ActStore, layer: Any, role: Any, step: Any) -> dict[str, Any]:
    return {"source": str(store.path), "filter": {"layer": layer, "role": role, "step": step},
            "actstore": store.meta}


# ------------------------------------------------------------------------------------------ npy
def _export_npy(store: ActStore, out: Path, chosen: list[tuple[str, list[ActView]]], manifest: dict[str, Any],
                progress: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    step = store.record.layout.chunk_rows
    for role, views in chosen:
        cols = list(store.record.roles[role].columns)
        table = views[0].rows()
        rows = np.stack([table[c] for c in cols], axis=1).astype("<i8") if cols else np.zeros((0, 0), "<i8")
        np.save(out / f"{role}.rows.npy", rows)
        files[f"{role}.rows.npy"] = {"kind": "rows", "role": role, "columns": cols}
        for v in views:
            name = f"{role}.{v.layer}.npy"
            storage = DTYPES[dtype_name(v.dtype)][1]
            mm = np.lib.format.open_memmap(out / name, mode="w+", dtype=storage, shape=v.shape)
            with _bar(len(v), name, progress) as bar:
                pos = 0
                for part in _chunks(v, step):
                    mm[pos:pos + len(part)] = part
                    pos += len(part)
                    bar.update(len(part))
            mm.flush()
            del mm
            files[name] = {"kind": "acts", "role": role, "layer": v.layer, "dtype": dtype_name(v.dtype),
                           "stored_as": storage.name}
    for name in store.conds:
        spec = store.record.conds[name]
        crow = store.cond_rows(name)
        np.save(out / f"cond.{name}.npy", to_storage(store.cond(name))[0])
        np.save(out / f"cond.{name}.rows.npy", np.stack([crow["sample"], crow["step"]], axis=1))
        files[f"cond.{name}.npy"] = {"kind": "cond", "cond": name, "dtype": spec.dtype,
                                     "stored_as": spec.storage_dtype.name}
        files[f"cond.{name}.rows.npy"] = {"kind": "cond_rows", "cond": name, "columns": ["sample", "step"]}
    (out / "manifest.json").write_text(json.dumps({**manifest, "files": files}, indent=1, default=str))


# ------------------------------------------------------------------------------------------ safetensors
def _export_safetensors(store: ActStore, out: Path, chosen: list[tuple[str, list[ActView]]],
                        manifest: dict[str, Any], progress: bool) -> None:
    """Write the safetensors layout by hand (8-byte header length, JSON header, raw little-endian data) so that
    activations stream in chunks instead of being gathered into one dict first."""
    entries: list[tuple[str, str, list[int], Any]] = []  # name, dtype, shape, source
    for role, views in chosen:
        for v in views:
            entries.append((f"acts.{role}.{v.layer}", _ST_DTYPES[dtype_name(v.dtype)], list(v.shape), v))
        table = views[0].rows()
        for c in store.record.roles[role].columns:
            entries.append((f"rows.{role}.{c}", "I64", [len(views[0])], np.ascontiguousarray(table[c], "<i8")))
    for name in store.conds:
        spec = store.record.conds[name]
        crow = store.cond_rows(name)
        acts = to_storage(store.cond(name))[0]
        entries.append((f"cond.{name}", _ST_DTYPES[spec.dtype], list(acts.shape), acts))
        for c in ("sample", "step"):
            entries.append((f"cond.{name}.{c}", "I64", [len(crow[c])], np.ascontiguousarray(crow[c], "<i8")))
    header: dict[str, Any] = {"__metadata__": {"actstore": json.dumps(manifest["actstore"], default=str),
                                               "filter": json.dumps(manifest["filter"]),
                                               "source": manifest["source"]}}
    offset = 0
    for name, dtype, shape, _src in entries:
        itemsize = 8 if dtype in ("I64", "F64") else (4 if dtype == "F32" else 2)
        nbytes = int(np.prod(shape)) * itemsize
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    step = store.record.layout.chunk_rows
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, _, _, src in entries:
            if isinstance(src, ActView):
                with _bar(len(src), name, progress) as bar:
                    for part in _chunks(src, step):
                        f.write(np.ascontiguousarray(part).tobytes())
                        bar.update(len(part))
            else:
                f.write(np.ascontiguousarray(src).tobytes())
    os.replace(tmp, out)


# ------------------------------------------------------------------------------------------ entry point
def export(path: str | os.PathLike[str], to: str, out: str | os.PathLike[str], *,
           layer: list[int | str] | None = None, role: list[str] | None = None, step: list[int] | None = None,
           overwrite: bool = False, progress: bool = False, codec: str | None = None) -> Path:
    """Export the store at ``path`` in format ``to`` (one of :data:`FORMATS`) to ``out``; see the module docstring.

    ``layer`` / ``role`` / ``step`` restrict npy and safetensors exports; a store conversion (zarr, h5) always copies
    the whole store and refuses a filter.
    """
    if to not in FORMATS:
        raise ConfigError(f"unknown export format {to!r}; formats are {list(FORMATS)}")
    out = Path(out)
    if to in ("zarr", "h5"):
        if layer is not None or role is not None or step is not None:
            raise ConfigError(f"--to {to} converts the whole store bit-exact; --layer/--role/--step only "
                              "apply to npy and safetensors exports")
        return convert(path, out, backend="zarr" if to == "zarr" else "hdf5", overwrite=overwrite, progress=progress,
                       codec=codec)
    if codec is not None:
        raise ConfigError(f"--codec applies to store conversions (--to zarr / h5), not to --to {to}")
    _check_out(out, overwrite)
    with ActStore.open(path) as store:
        chosen = _select(store, layer, role, step)
        manifest = _manifest(store, layer, role, step)
        if to == "npy":
            _export_npy(store, out, chosen, manifest, progress)
        else:
            _export_safetensors(store, out, chosen, manifest, progress)
    return out


def load_npy(directory: str | os.PathLike[str], name: str) -> Any:
    """Read one exported ``.npy`` back as a torch tensor in its logical dtype (bf16 restored from its bits)."""
    directory = Path(directory)
    files = json.loads((directory / "manifest.json").read_text())["files"]
    if name not in files:
        raise UnknownKeyError(f"no {name!r} in {directory}; files are {sorted(files)}")
    arr = np.load(directory / name)
    dtype = files[name].get("dtype")
    return from_storage(np.ascontiguousarray(arr), dtype) if dtype else arr
