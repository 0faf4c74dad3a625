"""A store's summary: as a JSON-able dict for scripts and as a rich table for people."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..read._reader import ActStore

__all__ = ["render_summary", "summarize"]


def summarize(store: ActStore) -> dict[str, Any]:
    """What is in the store, how big it is raw and on disk."""
    roles = []
    raw = 0
    for role in store.roles:
        n = store.num_rows(role)
        spec = store.record.roles[role]
        layers = []
        for e in spec.layers:
            nbytes = n * e.d * e.storage_dtype.itemsize
            raw += nbytes
            layers.append({"layer": e.layer, "d": e.d, "dtype": e.dtype, "raw_bytes": nbytes})
        raw += n * len(spec.columns) * 8
        table = store.rows(role)
        steps = store.steps_of(role)
        roles.append(
            {
                "role": role,
                "rows": n,
                "columns": list(spec.columns),
                "steps": steps,
                "samples": int(np.unique(table["sample"]).size),
                "layers": layers,
            }
        )
    conds = []
    record = store.record
    for name, spec in record.conds.items():
        n = int(record.commit.conds.get(name, 0))
        raw += n * (spec.d * spec.storage_dtype.itemsize + 16)
        conds.append({"cond": name, "rows": n, "d": spec.d, "dtype": spec.dtype})
    stored = store.stored_bytes()
    return {
        "path": store.path,
        "format_version": store.format_version,
        "created": record.created,
        "library": record.library,
        "layout": record.layout.to_json(),
        "layers": store.layers,
        "roles": roles,
        "conds": conds,
        "samples": store.num_samples,
        "raw_bytes": raw,
        "stored_bytes": stored,
        "ratio": raw / stored if stored else None,
        "commit": {k: store.commit[k] for k in ("seq", "time", "progress")},
        "attrs": store.attrs,
    }


def _gb(n: int) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def render_summary(summary: dict[str, Any]) -> Any:
    """A rich renderable of :func:`summarize`'s result."""
    from rich.console import Group
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    layout = summary["layout"]
    ratio = summary["ratio"]
    for key, value in (
        ("store", summary["path"]),
        ("format", f"v{summary['format_version']} ({summary['library']}), created {summary['created']}"),
        ("layout", f"codec {layout['codec']}, chunks of {layout['chunk_rows']} rows, blocks of {layout['block_rows']}"),
        ("size", f"{_gb(summary['raw_bytes'])} raw, {_gb(summary['stored_bytes'])} stored"
                 + (f" ({ratio:.2f}x)" if ratio else "")),
        ("samples", str(summary["samples"])),
        ("commit", f"#{summary['commit']['seq']} at {summary['commit']['time']}, progress {summary['commit']['progress']}"),
    ):
        head.add_row(f"[bold]{key}[/bold]", str(value))
    model = summary["attrs"].get("model")
    if isinstance(model, dict):
        weights = "random weights" if model.get("random_weights") else f"checkpoint {model.get('checkpoint_path')}"
        details = ", ".join(str(x) for x in (model.get("adapter"), model.get("dtype"), weights) if x)
        head.add_row("[bold]model[/bold]", f"{model.get('class') or model.get('name')} ({details})")
    elif model is not None:
        head.add_row("[bold]model[/bold]", str(model))
    capture = summary["attrs"].get("capture")
    if isinstance(capture, dict):
        keys = ("layers", "roles", "num_steps", "batch_size", "cond", "source")
        head.add_row("[bold]capture[/bold]", ", ".join(f"{k} {capture[k]}" for k in keys if capture.get(k) is not None))
    table = Table(title="activations", show_lines=False)
    for col in ("role", "layer", "rows", "d", "dtype", "steps", "samples", "raw"):
        table.add_column(col, justify="right" if col in ("rows", "d", "samples", "raw") else "left")
    for r in summary["roles"]:
        steps = r["steps"]
        step_text = "-" if not steps else (f"{steps[0]}..{steps[-1]}" if len(steps) > 2 else ",".join(map(str, steps)))
        for e in r["layers"]:
            table.add_row(r["role"], str(e["layer"]), f"{r['rows']:,}", str(e["d"]), e["dtype"], step_text,
                          str(r["samples"]), _gb(e["raw_bytes"]))
    parts: list[Any] = [head, table]
    if summary["conds"]:
        ct = Table(title="conditioning")
        for col in ("cond", "rows", "d", "dtype"):
            ct.add_column(col)
        for c in summary["conds"]:
            ct.add_row(c["cond"], f"{c['rows']:,}", str(c["d"]), c["dtype"])
        parts.append(ct)
    return Group(*parts)
