"""Inline SVG charts (line, scatter, histogram, grouped bars) with no dependencies, for the self-contained HTML report."""
from __future__ import annotations

import math
from html import escape
from typing import Sequence

import numpy as np

W, H = 520, 300
PAD_L, PAD_R, PAD_T, PAD_B = 56, 16, 30, 44
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _scale(lo: float, hi: float, a: float, b: float, log: bool = False):
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    span = (hi - lo) or 1.0

    def f(v: float) -> float:
        v = math.log10(v) if log else v
        return a + (v - lo) / span * (b - a)
    return f


def _frame(title: str, xlabel: str, ylabel: str, xs: list[float], ys: list[float], fx, fy, xlog: bool) -> list[str]:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>',
           f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" stroke="#333"/>',
           f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}" stroke="#333"/>',
           f'<text x="{(PAD_L + W - PAD_R) / 2}" y="{H - 8}" text-anchor="middle" font-size="12">{escape(xlabel)}</text>',
           f'<text x="14" y="{(PAD_T + H - PAD_B) / 2}" text-anchor="middle" font-size="12" '
           f'transform="rotate(-90 14 {(PAD_T + H - PAD_B) / 2})">{escape(ylabel)}</text>']
    xt = xs if xlog else _ticks(min(xs), max(xs))
    for v in xt:
        out.append(f'<text x="{fx(v):.1f}" y="{H - PAD_B + 16}" text-anchor="middle" font-size="10">{v:g}</text>')
    for v in _ticks(min(ys), max(ys)):
        out.append(f'<text x="{PAD_L - 4}" y="{fy(v) + 3:.1f}" text-anchor="end" font-size="10">{v:.3g}</text>')
        out.append(f'<line x1="{PAD_L}" y1="{fy(v):.1f}" x2="{W - PAD_R}" y2="{fy(v):.1f}" stroke="#eee"/>')
    return out


def _legend(names: Sequence[str]) -> list[str]:
    width = 6.2 * max((len(n) for n in names), default=0) + 8
    box = [f'<rect x="{W - PAD_R - width:.0f}" y="{PAD_T}" width="{width:.0f}" height="{13 * len(names) + 4}" '
           'fill="white" fill-opacity="0.85"/>'] if names else []
    return box + [f'<text x="{W - PAD_R - 4}" y="{PAD_T + 12 + 13 * i}" text-anchor="end" font-size="10" '
            f'fill="{COLORS[i % len(COLORS)]}">{escape(n)}</text>' for i, n in enumerate(names)]


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str, ylabel: str,
               xlog: bool = False) -> str:
    """Lines with markers; ``series`` maps a name to (xs, ys). Non-finite points are dropped."""
    clean = {n: [(float(x), float(y)) for x, y in zip(*xy) if math.isfinite(float(y))] for n, xy in series.items()}
    clean = {n: p for n, p in clean.items() if p}
    if not clean:
        return f'<p class="empty">{escape(title)}: no data</p>'
    xs = sorted({x for p in clean.values() for x, _ in p})
    ys = [y for p in clean.values() for _, y in p]
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    fx = _scale(xs[0], xs[-1] if xs[-1] > xs[0] else xs[0] + 1, PAD_L, W - PAD_R, xlog and xs[0] > 0)
    fy = _scale(lo - pad, hi + pad, H - PAD_B, PAD_T)
    out = _frame(title, xlabel, ylabel, xs, [lo - pad, hi + pad], fx, fy, xlog)
    for i, (name, pts) in enumerate(clean.items()):
        c = COLORS[i % len(COLORS)]
        path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in pts)
        out.append(f'<polyline class="series" data-name="{escape(name)}" fill="none" stroke="{c}" '
                   f'stroke-width="2" points="{path}"/>')
        out += [f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="2.5" fill="{c}"/>' for x, y in pts]
    return "\n".join(out + _legend(list(clean)) + ["</svg>"])


def scatter_chart(points: dict[str, tuple[float, float]], title: str, xlabel: str, ylabel: str) -> str:
    """Labelled points; ``points`` maps a name to (x, y)."""
    pts = {n: (float(x), float(y)) for n, (x, y) in points.items() if math.isfinite(x) and math.isfinite(y)}
    if not pts:
        return f'<p class="empty">{escape(title)}: no data</p>'
    xs, ys = [p[0] for p in pts.values()], [p[1] for p in pts.values()]
    px = (max(xs) - min(xs)) * 0.1 or 0.05
    py = (max(ys) - min(ys)) * 0.1 or 0.05
    fx = _scale(min(xs) - px, max(xs) + px, PAD_L, W - PAD_R)
    fy = _scale(min(ys) - py, max(ys) + py, H - PAD_B, PAD_T)
    out = _frame(title, xlabel, ylabel, [min(xs) - px, max(xs) + px], [min(ys) - py, max(ys) + py], fx, fy, False)
    for i, (name, (x, y)) in enumerate(pts.items()):
        c = COLORS[i % len(COLORS)]
        out.append(f'<circle class="point" data-name="{escape(name)}" cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="5" '
                   f'fill="{c}"/>')
        right = fx(x) > W * 0.6
        out.append(f'<text x="{fx(x) + (-7 if right else 7):.1f}" y="{fy(y) - 6:.1f}" font-size="10" '
                   f'text-anchor="{"end" if right else "start"}" fill="{c}">{escape(name)}</text>')
    return "\n".join(out + ["</svg>"])


def histogram(values: np.ndarray, bins: int, title: str, xlabel: str, lo: float | None = None,
              hi: float | None = None) -> str:
    """Bars of ``np.histogram(values, bins, range=(lo, hi))`` with counts on the y axis."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return f'<p class="empty">{escape(title)}: no data</p>'
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    fx = _scale(lo, hi, PAD_L, W - PAD_R)
    fy = _scale(0, float(counts.max()) * 1.05 or 1.0, H - PAD_B, PAD_T)
    out = _frame(title, xlabel, "count", [lo, hi], [0, float(counts.max()) * 1.05 or 1.0], fx, fy, False)
    for c, a, b in zip(counts.tolist(), edges[:-1].tolist(), edges[1:].tolist()):
        out.append(f'<rect class="bar" x="{fx(a):.1f}" y="{fy(c):.1f}" width="{max(fx(b) - fx(a) - 1, 0.5):.1f}" '
                   f'height="{fy(0) - fy(c):.1f}" fill="{COLORS[0]}" data-count="{c}"/>')
    return "\n".join(out + ["</svg>"])


def bar_chart(groups: dict[str, Sequence[float]], categories: Sequence[str], title: str, xlabel: str,
              ylabel: str) -> str:
    """Grouped bars: one group per category, one bar per series; ``groups`` maps a series name to one value
    per category. Non-finite values draw no bar."""
    clean = {n: [float(v) for v in vals] for n, vals in groups.items()}
    finite = [v for vals in clean.values() for v in vals if math.isfinite(v)]
    if not finite or not categories:
        return f'<p class="empty">{escape(title)}: no data</p>'
    top = max(max(finite), 0.0) * 1.05 or 1.0
    fx = _scale(0, len(categories), PAD_L, W - PAD_R)
    fy = _scale(0, top, H - PAD_B, PAD_T)
    out = _frame(title, xlabel, ylabel, [], [0, top], fx, fy, True)  # xlog: no numeric x ticks
    width = (fx(1) - fx(0)) * 0.8 / max(len(clean), 1)
    for j, cat in enumerate(categories):
        out.append(f'<text x="{fx(j + 0.5):.1f}" y="{H - PAD_B + 12}" text-anchor="middle" font-size="10">'
                   f'{escape(str(cat))}</text>')
        for i, (name, vals) in enumerate(clean.items()):
            v = vals[j] if j < len(vals) else float("nan")
            if not math.isfinite(v):
                continue
            x = fx(j + 0.1) + i * width
            out.append(f'<rect class="bar" data-name="{escape(name)}" x="{x:.1f}" y="{fy(v):.1f}" '
                       f'width="{max(width - 1, 0.5):.1f}" height="{fy(0) - fy(v):.1f}" '
                       f'fill="{COLORS[i % len(COLORS)]}" data-value="{v:.6g}"/>')
    return "\n".join(out + _legend(list(clean)) + ["</svg>"])
