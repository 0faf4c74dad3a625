"""Small inline SVG charts (bars, signed bars, sparklines): plain strings, no JavaScript, no external assets."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

__all__ = ["bars", "signed_bars", "sparkline"]

_FG, _POS, _NEG, _AXIS = "#3b6ea5", "#2e8b57", "#c0392b", "#888"


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def bars(values: Sequence[float] | np.ndarray, labels: Sequence[str], *, title: str, ylabel: str = "",
         width: int = 420, height: int = 170, every: int | None = None) -> str:
    """A bar chart: one bar per value (>= 0), the label under every ``every``-th bar, a tooltip on each."""
    v = np.asarray(values, dtype=np.float64)
    n = max(len(v), 1)
    left, right, top, bottom = 44, 8, 22, 30
    pw, ph = width - left - right, height - top - bottom
    vmax = float(v.max()) if len(v) and v.max() > 0 else 1.0
    bw = pw / n
    every = every or max(1, int(np.ceil(n / 12)))
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f'<text x="{left}" y="14" class="t">{escape(title)}</text>',
           f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="{_AXIS}"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="{_AXIS}"/>',
           f'<text x="{left - 4}" y="{top + 8}" class="a" text-anchor="end">{_fmt(vmax)}</text>',
           f'<text x="{left - 4}" y="{top + ph}" class="a" text-anchor="end">0</text>']
    if ylabel:
        out.append(f'<text x="10" y="{top + ph / 2}" class="a" transform="rotate(-90 10 {top + ph / 2})" '
                   f'text-anchor="middle">{escape(ylabel)}</text>')
    for i, (x, lab) in enumerate(zip(v, labels, strict=True)):
        h = ph * x / vmax if vmax > 0 else 0.0
        xs = left + i * bw
        out.append(f'<rect x="{xs + 0.1 * bw:.2f}" y="{top + ph - h:.2f}" width="{0.8 * bw:.2f}" height="{h:.2f}" '
                   f'fill="{_FG}"><title>{escape(str(lab))}: {_fmt(x)}</title></rect>')
        if i % every == 0:
            out.append(f'<text x="{xs + bw / 2:.2f}" y="{top + ph + 12}" class="a" text-anchor="middle">'
                       f'{escape(str(lab))}</text>')
    out.append("</svg>")
    return "".join(out)


def signed_bars(values: Sequence[float] | np.ndarray, labels: Sequence[str], *, title: str, width: int = 420,
                height: int = 170) -> str:
    """Bars up (positive) and down (negative) from a zero line, scaled to the largest magnitude."""
    v = np.asarray(values, dtype=np.float64)
    n = max(len(v), 1)
    left, right, top, bottom = 44, 8, 22, 26
    pw, ph = width - left - right, height - top - bottom
    vmax = float(np.abs(v).max()) if len(v) and np.abs(v).max() > 0 else 1.0
    mid = top + ph / 2
    bw = pw / n
    every = max(1, int(np.ceil(n / 16)))
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f'<text x="{left}" y="14" class="t">{escape(title)}</text>',
           f'<line x1="{left}" y1="{mid}" x2="{left + pw}" y2="{mid}" stroke="{_AXIS}"/>',
           f'<text x="{left - 4}" y="{top + 8}" class="a" text-anchor="end">+{_fmt(vmax)}</text>',
           f'<text x="{left - 4}" y="{top + ph}" class="a" text-anchor="end">-{_fmt(vmax)}</text>']
    for i, (x, lab) in enumerate(zip(v, labels, strict=True)):
        h = (ph / 2) * abs(x) / vmax
        y = mid - h if x >= 0 else mid
        out.append(f'<rect x="{left + i * bw + 0.1 * bw:.2f}" y="{y:.2f}" width="{0.8 * bw:.2f}" height="{h:.2f}" '
                   f'fill="{_POS if x >= 0 else _NEG}"><title>{escape(str(lab))}: {x:+.3g}</title></rect>')
        if i % every == 0:
            out.append(f'<text x="{left + (i + 0.5) * bw:.2f}" y="{top + ph + 14}" class="a" '
                       f'text-anchor="middle">{escape(str(lab))}</text>')
    out.append("</svg>")
    return "".join(out)


def sparkline(values: Sequence[float] | np.ndarray, *, width: int = 90, height: int = 18) -> str:
    """A tiny bar sparkline (no labels), for table cells."""
    v = np.asarray(values, dtype=np.float64)
    n = max(len(v), 1)
    vmax = float(v.max()) if len(v) and v.max() > 0 else 1.0
    bw = width / n
    rects = "".join(f'<rect x="{i * bw:.2f}" y="{height - height * x / vmax:.2f}" width="{max(bw - 1, 0.5):.2f}" '
                    f'height="{height * x / vmax:.2f}" fill="{_FG}"/>' for i, x in enumerate(v))
    return (f'<svg class="spark" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{rects}</svg>')
