"""Write the static site of one feature group: ``index.html`` (searchable feature list) and ``f/<id>.html``.

Every page is self-contained: inline CSS, inline SVG plots, a few lines of inline JavaScript for the search box; no
server, no network, no CDN. Open ``index.html`` in a browser.

A feature page holds its activation histogram, firing density by denoising step and by task (or episode), the mean
activation by step, its top examples (``FeatureSet.top``: activation, row, sample, step, position, token, prompt;
the prompt token highlighted for the instruction role, the action token and step for the decision role) and, when
a ``velocity`` readout is given and the role is ``decision``, the velocity the feature writes (the model-specific
readout lives with the model layouts in capture: ``capture.feature_velocity``; this package never imports capture).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._errors import ConfigError, StoreExistsError
from ...format._format import NO_STEP
from . import _svg

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from .._features import FeatureSet, TopExamples

    VelocityReadout = Callable[[FeatureSet, int, int], tuple[torch.Tensor, TopExamples]]

__all__ = ["DashboardConfig", "write_dashboard"]

MARKER = "actstore-dashboard.json"
"""File that marks a folder as a dashboard this module wrote (only such a folder is replaced with overwrite)."""


@dataclass(frozen=True)
class DashboardConfig:
    """What the dashboard shows."""

    top: int = 16
    """Top examples per feature page (at most the pass's top_k)."""
    max_features: int = 1000
    """Pages for at most this many features, the most often firing first (the index lists the same ones)."""
    lens_examples: int = 8
    """Top examples the velocity readout averages over."""
    by: tuple[str, ...] = ("task", "episode")
    """Groupings to plot density by, the first the group has."""
    tokenizer: str = "auto"
    """How prompt tokens are shown: 'words' (capture's synthetic tokenizer: BOS, whitespace words, newline),
    'ids' (token ids), or 'auto' (words for a store captured from synthetic prompts, else ids)."""

    def __post_init__(self) -> None:
        if self.top < 1 or self.max_features < 1 or self.lens_examples < 1:
            raise ConfigError(f"top, max_features and lens_examples must be >= 1, got {self.top}, "
                              f"{self.max_features}, {self.lens_examples}")
        if self.tokenizer not in ("auto", "words", "ids"):
            raise ConfigError(f"tokenizer must be 'auto', 'words' or 'ids', got {self.tokenizer!r}")


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 6px} a{color:#3b6ea5}
table{border-collapse:collapse;font-size:13px} th,td{padding:3px 8px;border-bottom:1px solid #e4e4e4;text-align:left}
th{background:#f5f5f5;position:sticky;top:0} td.n{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#666} .charts{display:flex;flex-wrap:wrap;gap:14px} .chart .t{font-size:12px;font-weight:600}
.chart .a{font-size:10px;fill:#555} input#q{font-size:14px;padding:5px 8px;width:360px;margin:8px 0}
.tok{display:inline-block;padding:0 3px;margin:1px;border-radius:3px;background:#f0f0f0;font-family:monospace}
mark.tok{background:#ffd54f;font-weight:700} .prompt{max-width:520px} nav a{margin-right:10px}
"""

_SEARCH_JS = """
const q=document.getElementById('q'),rows=[...document.querySelectorAll('#features tbody tr')],
n=document.getElementById('shown');
function filter(){const ws=q.value.trim().toLowerCase().split(/\\s+/).filter(Boolean);let k=0;
for(const r of rows){const ok=ws.every(w=>/^f?\\d+$/.test(w)?r.dataset.id===w.replace('f',''):
r.dataset.search.includes(w));r.style.display=ok?'':'none';if(ok)k++;}n.textContent=k;}
if(location.hash.startsWith('#q='))q.value=decodeURIComponent(location.hash.slice(3));
q.addEventListener('input',filter);filter();
"""


def _page(title: str, body: str, script: str = "") -> str:
    js = f"<script>{script}</script>" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f"<style>{_CSS}</style></head><body>{body}{js}</body></html>\n")


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _word_chips(store: Any) -> dict[int, list[str]] | None:
    """Sample id -> token texts of its prompt under capture's synthetic tokenizer (BOS, words, newline), for the
    samples whose instruction mask has exactly that many tokens; None when the store has no prompts."""
    table = store.samples()
    if "prompt" not in table:
        return None
    mask = table.get("instruction_mask")
    out = {}
    for i, (sid, text) in enumerate(zip(table["sample"], table["prompt"], strict=True)):
        chips = ["<bos>", *text.split(), "\\n"]
        if mask is None or int(np.asarray(mask[i]).sum()) == len(chips):
            out[int(sid)] = chips
    return out


def _use_words(store: Any, mode: str) -> bool:
    if mode != "auto":
        return mode == "words"
    cap = store.attrs.get("capture") if isinstance(store.attrs.get("capture"), dict) else {}
    options = cap.get("options") if isinstance(cap.get("options"), dict) else {}
    return cap.get("source") == "synthetic" and options.get("tokenizer") is None


class _Prompts:
    """Renders an instruction row's prompt as token chips with the row's token marked."""

    def __init__(self, fs: FeatureSet, words: bool) -> None:
        self.fs = fs
        table = fs.store.samples()
        self.ids = table.get("prompt_ids")
        self.mask = table.get("instruction_mask")
        self.index = {int(s): i for i, s in enumerate(table["sample"])}
        self.words = _word_chips(fs.store) if words else None

    def chips(self, sample: int, position: int) -> tuple[str, int]:
        j = int(self.fs.prompt_index(np.array([sample]), np.array([position]))[0])
        i = self.index.get(int(sample))
        if i is None:
            return "", j
        if self.words is not None and int(sample) in self.words:
            texts = self.words[int(sample)]
        elif self.ids is not None:
            n = int(np.asarray(self.mask[i]).sum()) if self.mask is not None else self.ids.shape[1]
            texts = [f"{int(t)}" for t in self.ids[i, :n]]
        else:
            return "", j
        parts = [f'<mark class="tok">{escape(t)}</mark>' if k == j else f'<span class="tok">{escape(t)}</span>'
                 for k, t in enumerate(texts)]
        return "".join(parts), j


def _examples_table(top: TopExamples, role: str, prompts: _Prompts | None) -> str:
    stepped = role != "instruction"
    head = ("<tr><th>#</th><th>activation</th><th>row</th><th>sample</th><th>step</th><th>position</th>"
            "<th>token</th><th>prompt</th></tr>")
    rows = []
    for i, r in enumerate(top.to_records()):
        step = str(r["step"]) if r["step"] != NO_STEP else "-"
        if prompts is not None:
            chips, j = prompts.chips(r["sample"], r["position"])
            prompt_cell = f'<td class="prompt">{chips or escape(r["prompt"])}</td>'
            extra = f' data-prompt-index="{j}"'
        else:
            prompt_cell, extra = f'<td class="prompt">{escape(r["prompt"])}</td>', ""
        token = escape(r["token"]) + (f" @ step {step}" if stepped else "")
        rows.append(
            f'<tr data-row="{r["row"]}" data-activation="{r["activation"]!r}" data-sample="{r["sample"]}" '
            f'data-step="{r["step"]}" data-position="{r["position"]}" data-token="{escape(r["token"])}" '
            f'data-prompt="{escape(r["prompt"])}"{extra}><td class="n">{i + 1}</td><td class="n">{_fmt(r["activation"])}'
            f'</td><td class="n">{r["row"]}</td><td class="n">{r["sample"]}</td><td class="n">{step}</td>'
            f'<td class="n">{r["position"]}</td><td>{token}</td>{prompt_cell}</tr>')
    return f'<table id="top"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _grouping(fs: FeatureSet, by: tuple[str, ...]) -> str | None:
    return next((g for g in by if g in fs.record["groups"]), None)


def _feature_page(fs: FeatureSet, f: int, cfg: DashboardConfig, prompts: _Prompts | None, velocity: Any,
                  nav: tuple[int | None, int | None]) -> str:
    count = int(fs.array("count")[f])
    dens = float(fs.density()[f])
    vmax = float(fs.array("max")[f])
    mean_fire = float(fs.array("sum")[f]) / max(count, 1)
    charts = []
    counts, edges = fs.histogram(f)
    charts.append(_svg.bars(counts, [f"{e:.2g}" for e in edges[:-1]], title="activation histogram (log bins)",
                            ylabel="rows", every=max(1, len(counts) // 6)))
    steps = fs.steps
    if steps != [NO_STEP]:
        labels = [str(s) for s in steps]
        charts.append(_svg.bars(fs.density(by="step")[:, f], labels, title="firing density by denoising step",
                                ylabel="fraction"))
        charts.append(_svg.bars(fs.mean_by_step()[:, f], labels, title="mean activation by step", ylabel="mean"))
    g = _grouping(fs, cfg.by)
    if g is not None:
        charts.append(_svg.bars(fs.density(by=g)[:, f], [str(v) for v in fs.groups(g)],
                                title=f"firing density by {g}", ylabel="fraction"))
    top = fs.top(f, min(cfg.top, fs.record["top_k"]))
    lens_html = ""
    if velocity is not None:
        dv, used = velocity
        mean = dv.mean(0).numpy() if len(dv) else np.zeros(dv.shape[1])
        norms = ", ".join(f"{float(n):.3g}" for n in dv.norm(dim=1)) if len(dv) else "-"
        lens_html = (f'<h2>Velocity lens: the action change this feature writes</h2><p class="meta">Mean over its '
                     f"top {len(used)} rows of head(norm(x)) - head(norm(x - a&#183;W_dec[f])) through the expert's "
                     f"final norm (each row's own conditioning) and action_out_proj; |&#916;v| per row: {norms}</p>"
                     + _svg.signed_bars(mean, [str(i) for i in range(len(mean))],
                                        title="mean velocity change per action dimension", width=640))
    prev, nxt = nav
    links = ['<a href="../index.html">all features</a>']
    if prev is not None:
        links.append(f'<a href="{prev}.html">&#8592; feature {prev}</a>')
    if nxt is not None:
        links.append(f'<a href="{nxt}.html">feature {nxt} &#8594;</a>')
    body = (f"<nav>{''.join(links)}</nav><h1>Feature {f}</h1>"
            f'<p class="meta">group {escape(fs.name)} &#183; layer {escape(str(fs.layer))} &#183; role '
            f"{escape(fs.role)} &#183; fires on {count:,} of {fs.n_rows:,} rows (density {dens:.3g}) &#183; max "
            f"{_fmt(vmax)} &#183; mean when firing {_fmt(mean_fire)}</p>"
            f'<div class="charts">{"".join(charts)}</div>{lens_html}'
            f"<h2>Top {len(top)} examples</h2>{_examples_table(top, fs.role, prompts)}")
    return _page(f"feature {f} - {fs.name}", body)


def _index(fs: FeatureSet, feats: list[int], cfg: DashboardConfig, top_tokens: dict[int, str]) -> str:
    count = fs.array("count")
    dens = fs.density()
    alive = int((count > 0).sum())
    stepped = fs.steps != [NO_STEP]
    by_step = fs.density(by="step") if stepped else None
    rows = []
    for f in feats:
        spark = _svg.sparkline(by_step[:, f]) if by_step is not None else ""
        tok = top_tokens.get(f, "")
        rows.append(f'<tr data-id="{f}" data-search="{escape(tok.lower())}"><td class="n"><a href="f/{f}.html">{f}'
                    f'</a></td><td class="n">{dens[f]:.3g}</td><td class="n">{int(count[f]):,}</td>'
                    f'<td class="n">{_fmt(float(fs.array("max")[f]))}</td><td>{spark}</td><td>{escape(tok)}</td></tr>')
    log_d = np.log10(dens[count > 0]) if alive else np.zeros(0)
    hist, edges = np.histogram(log_d, bins=24) if alive else (np.zeros(1), np.zeros(2))
    sae = fs.record["sae"]
    k_text = f" (k={sae['k']})" if sae.get("k") else ""
    step_head = "<th>density by step</th>" if stepped else "<th></th>"
    body = (f"<h1>Features of {escape(fs.name)}</h1>"
            f'<p class="meta">store {escape(str(fs.store.path))} &#183; layer {escape(str(fs.layer))} &#183; role '
            f"{escape(fs.role)} &#183; {fs.n_rows:,} rows &#183; SAE {escape(str(sae['kind']))} {sae['d_in']} &#8594; "
            f"{sae['d_sae']}{k_text} &#183; {alive:,} features fire, "
            f"{sae['d_sae'] - alive:,} never &#183; pages for the {len(feats):,} most frequent</p>"
            + _svg.bars(hist, [f"{e:.1f}" for e in edges[:-1]], title="features by log10 firing density",
                        ylabel="features", width=520)
            + '<div><input id="q" type="search" placeholder="search: f123 (a feature) or words of tokens / prompts" '
            f'autofocus> <span class="meta"><span id="shown">{len(feats)}</span> shown</span></div>'
            f'<table id="features"><thead><tr><th>feature</th><th>density</th><th>rows</th><th>max</th>{step_head}'
            f'<th>top examples</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return _page(f"features of {fs.name}", body, _SEARCH_JS)


def _summary_tokens(top: TopExamples, role: str) -> str:
    """A short searchable description of a feature's top examples: its commonest tokens and prompts."""
    if role == "instruction":
        common = Counter(top.token).most_common(3)
        words = ", ".join(f"{t} ({n})" for t, n in common)
    else:
        steps = Counter(int(s) for s in top.step).most_common(2)
        pos = Counter(int(p) for p in top.position).most_common(2)
        words = (", ".join(f"step {s} ({n})" for s, n in steps) + "; "
                 + ", ".join(f"t={p} ({n})" for p, n in pos))
    prompts = Counter(top.prompt).most_common(2)
    return words + " | " + " | ".join(p for p, _ in prompts if p)


def write_dashboard(fs: FeatureSet, out: str | os.PathLike[str], config: DashboardConfig | None = None, *,
                    velocity: VelocityReadout | None = None, overwrite: bool = False,
                    progress: bool = False) -> Path:
    """Write the site of feature group ``fs`` into folder ``out`` (which must not exist, or must be a dashboard
    written before, with ``overwrite``); returns the path of ``index.html``. With ``velocity`` (decision role), each
    page shows the velocity its feature writes: ``velocity(fs, f, k)`` returns the ``(k, action_dim)`` velocity
    changes on the feature's top ``k`` rows and those rows' ``TopExamples``, e.g.
    ``lambda fs, f, k: capture.feature_velocity(fs, model, f, k)`` with the policy the store was captured from."""
    cfg = config or DashboardConfig()
    root = Path(out)
    if root.exists():
        if not overwrite:
            raise StoreExistsError(f"{root} already exists; pass overwrite=True (--overwrite) to replace it")
        if not (root / MARKER).is_file():
            raise StoreExistsError(f"{root} exists and is not a dashboard actstore wrote (no {MARKER}); refusing to "
                                   "replace it: choose another --out")
        shutil.rmtree(root)
    if velocity is not None and fs.role == "instruction":
        raise ConfigError("the velocity lens reads decision rows; feature group "
                          f"{fs.name!r} holds instruction rows: leave out the velocity readout (--lens, --model)")
    count = fs.array("count")
    order = np.argsort(-count, kind="stable")
    feats = [int(f) for f in order[: cfg.max_features] if count[f] > 0]
    prompts = _Prompts(fs, _use_words(fs.store, cfg.tokenizer)) if fs.role == "instruction" else None
    tmp = root.with_name(root.name + ".writing")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "f").mkdir(parents=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(feats), desc=f"dashboard {fs.name}", unit="page")
    top_tokens: dict[int, str] = {}
    ids = sorted(feats)
    for i, f in enumerate(ids):
        written = None if velocity is None else velocity(fs, f, cfg.lens_examples)
        nav = (ids[i - 1] if i else None, ids[i + 1] if i + 1 < len(ids) else None)
        (tmp / "f" / f"{f}.html").write_text(_feature_page(fs, f, cfg, prompts, written, nav), encoding="utf-8")
        top_tokens[f] = _summary_tokens(fs.top(f, min(cfg.top, fs.record["top_k"])), fs.role)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    (tmp / "index.html").write_text(_index(fs, feats, cfg, top_tokens), encoding="utf-8")
    (tmp / MARKER).write_text(json.dumps({"group": fs.name, "features": feats, "store": str(fs.store.path),
                                          "lens": velocity is not None}))
    os.replace(tmp, root)
    return root / "index.html"
