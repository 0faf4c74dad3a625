"""PNG figures of a store: token-norm distributions, outlier dimensions and a 2-D PCA of one (layer, role).

Everything is computed on a deterministic sample of rows (``max_rows``, default 20,000, drawn with ``seed``), read
through the store's block cache and cast to float32; a huge store is never read whole. Figures are drawn with
matplotlib's Agg backend and written to a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._errors import UnknownKeyError
from ..format._format import NO_STEP
from ..read._reader import ActStore

__all__ = ["KINDS", "PlotData", "plot_store", "sample_rows"]

KINDS: tuple[str, ...] = ("all", "norms", "outliers", "pca")
"""Figure kinds: ``all`` (four panels), ``norms`` (per layer and per step), ``outliers``, ``pca``."""


def sample_rows(n: int, max_rows: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of at most ``max_rows`` of ``n`` rows, the same for the same (n, max_rows, seed)."""
    if n <= max_rows:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False)).astype(np.int64)


@dataclass
class PlotData:
    """The numbers behind a figure (float32), so tests and notebooks can check them without pixels."""

    layer: int | str
    role: str
    rows: dict[str, np.ndarray]
    """Row table of the sampled rows."""
    acts: np.ndarray
    """(n, d) sampled activations of ``layer``, float32."""
    norms_by_layer: dict[str, np.ndarray]
    """Layer name -> L2 norms of the same sampled rows at that layer."""
    color: np.ndarray | None
    """Per-row value the PCA is coloured by (step, or a samples column), or None."""
    color_label: str


def _read(view: Any, idx: np.ndarray, block: int = 4096) -> np.ndarray:
    parts = [view[idx[i:i + block]].float().numpy() for i in range(0, len(idx), block)]
    return np.concatenate(parts) if parts else np.zeros((0, view.shape[1]), np.float32)


def _colour(store: ActStore, rows: dict[str, np.ndarray], color_by: str | None) -> tuple[np.ndarray | None, str]:
    """Step for stepped roles, else a samples column (``task`` when present), else none."""
    steps = rows["step"]
    if color_by is None:
        if np.any(steps != NO_STEP):
            return steps, "denoising step"
        color_by = "task" if "task" in store.samples() else None
        if color_by is None:
            return None, ""
    if color_by in rows:
        return rows[color_by], color_by
    table = store.samples()
    if color_by not in table or not isinstance(table[color_by], np.ndarray) or table[color_by].ndim != 1:
        cols = sorted(rows) + [k for k, v in table.items() if isinstance(v, np.ndarray) and v.ndim == 1]
        raise UnknownKeyError(f"cannot colour by {color_by!r}; columns are {sorted(set(cols))}")
    lookup = dict(zip(table["sample"].tolist(), table[color_by].tolist(), strict=True))
    return np.array([lookup.get(int(s), -1) for s in rows["sample"]], dtype=np.int64), color_by


def collect(store: ActStore, layer: int | str, role: str, *, max_rows: int = 20_000, seed: int = 0,
            color_by: str | None = None) -> PlotData:
    """Sample rows of ``role`` and read them at ``layer`` (for the PCA and outliers) and at every layer (norms)."""
    view = store[layer, role]
    idx = sample_rows(len(view), max_rows, seed)
    table = store.rows(role)
    rows = {k: v[idx] for k, v in table.items()}
    acts = _read(view, idx)
    norms = {}
    for other in store.layers_of(role):
        x = acts if str(other) == str(layer) else _read(store[other, role], idx)
        norms[str(other)] = np.linalg.norm(x, axis=1)
    color, label = _colour(store, rows, color_by)
    return PlotData(layer, role, rows, acts, norms, color, label)


def pca_2d(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project centred rows on their top two principal directions; returns (coords (n, 2), explained ratio (2,))."""
    x = torch.from_numpy(acts).double()
    x = x - x.mean(0, keepdim=True)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2)), np.zeros(2)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(2, vh.shape[0])
    coords = np.zeros((x.shape[0], 2))
    coords[:, :k] = (x @ vh[:k].T).numpy()
    var = (s**2).numpy()
    ratio = np.zeros(2)
    ratio[:k] = var[:k] / max(var.sum(), 1e-30)
    return coords, ratio


def _panel_norm_layers(ax: Any, data: PlotData) -> None:
    names = list(data.norms_by_layer)
    values = [data.norms_by_layer[n] for n in names]
    parts = ax.violinplot(values, showmedians=True, showextrema=False)
    for body in parts["bodies"]:
        body.set_alpha(0.6)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_xlabel("layer")
    ax.set_ylabel("token L2 norm")
    ax.set_title(f"token norms per layer ({data.role})")


def _panel_norm_steps(ax: Any, data: PlotData) -> None:
    norms = np.linalg.norm(data.acts, axis=1)
    steps = data.rows["step"]
    if np.all(steps == NO_STEP):
        pos = data.rows["position"]
        order = np.unique(pos)
        means = np.array([norms[pos == p].mean() for p in order])
        ax.plot(order, means, marker="o", ms=3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("token position in the layer's sequence")
        ax.set_ylabel("mean token L2 norm")
        ax.set_title(f"layer {data.layer}: norm by position (no denoising steps)")
        return
    order = np.unique(steps[steps != NO_STEP])
    ax.boxplot([norms[steps == s] for s in order], showfliers=False)
    ax.set_xticks(range(1, len(order) + 1), [str(s) for s in order])
    ax.set_xlabel("denoising step (0 = pure noise, t = 1)")
    ax.set_ylabel("token L2 norm")
    ax.set_title(f"layer {data.layer}: token norms per denoising step")


def _panel_outliers(ax: Any, data: PlotData, top: int = 12) -> None:
    mag = np.abs(data.acts).mean(0)
    order = np.argsort(mag)[::-1][:top]
    median = float(np.median(mag))
    ax.bar(range(len(order)), mag[order], color="tab:red")
    ax.axhline(median, color="k", ls="--", lw=1, label=f"median over {mag.size} dims ({median:.3g})")
    ax.set_xticks(range(len(order)), [str(i) for i in order], rotation=45)
    ax.set_xlabel("dimension")
    ax.set_ylabel("mean |activation|")
    ax.set_title(f"layer {data.layer}: top {len(order)} outlier dimensions")
    ax.legend(loc="upper right", fontsize=9)


def _panel_pca(ax: Any, fig: Any, data: PlotData) -> None:
    coords, ratio = pca_2d(data.acts)
    if data.color is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=4, alpha=0.5)
    else:
        values = np.unique(data.color)
        cmap = "viridis" if data.color_label == "denoising step" else "tab20"
        sc = ax.scatter(coords[:, 0], coords[:, 1], c=data.color, s=4, alpha=0.6, cmap=cmap)
        if len(values) <= 12:
            handles, labels = sc.legend_elements()
            ax.legend(handles, labels, title=data.color_label, fontsize=8, title_fontsize=9, loc="best",
                      markerscale=0.8)
        else:
            fig.colorbar(sc, ax=ax, label=data.color_label)
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.1f}% var)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.1f}% var)")
    ax.set_title(f"layer {data.layer}: PCA of {len(coords):,} rows" +
                 (f" by {data.color_label}" if data.color is not None else ""))


def plot_store(store: ActStore | str | os.PathLike[str], layer: int | str, role: str, out: str | os.PathLike[str],
               *, kind: str = "all", max_rows: int = 20_000, seed: int = 0, color_by: str | None = None,
               dpi: int = 120) -> Path:
    """Write a PNG of ``store[layer, role]`` to ``out`` and return its path. ``kind`` is one of :data:`KINDS`."""
    if kind not in KINDS:
        raise UnknownKeyError(f"unknown plot kind {kind!r}; kinds are {list(KINDS)}")
    if isinstance(store, (str, os.PathLike)):
        with ActStore.open(store) as opened:
            return plot_store(opened, layer, role, out, kind=kind, max_rows=max_rows, seed=seed,
                              color_by=color_by, dpi=dpi)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    data = collect(store, layer, role, max_rows=max_rows, seed=seed, color_by=color_by)
    panels = {"all": ["layers", "steps", "outliers", "pca"], "norms": ["layers", "steps"],
              "outliers": ["outliers"], "pca": ["pca"]}[kind]
    ncol = 2 if len(panels) > 1 else 1
    nrow = (len(panels) + 1) // 2
    with plt.rc_context({"font.size": 10, "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3}):
        fig, axes = plt.subplots(nrow, ncol, figsize=(6.2 * ncol, 4.4 * nrow), squeeze=False)
        for ax, panel in zip(axes.flat, panels, strict=False):
            if panel == "layers":
                _panel_norm_layers(ax, data)
            elif panel == "steps":
                _panel_norm_steps(ax, data)
            elif panel == "outliers":
                _panel_outliers(ax, data)
            else:
                _panel_pca(ax, fig, data)
        name = Path(str(store.path)).name
        model = store.attrs.get("model", {})
        model_name = model.get("class") or model.get("name") if isinstance(model, dict) else None
        fig.suptitle(f"{name}: {role}, layer {layer}" + (f" ({model_name})" if model_name else "")
                     + f" - {len(data.acts):,} of {store.num_rows(role):,} rows", fontsize=12)
        fig.tight_layout()
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi)
        plt.close(fig)
    return out
