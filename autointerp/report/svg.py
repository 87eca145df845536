"""Charts as inline SVG strings, drawn in Python: the report needs no JS library and no network.

Every chart has a fixed viewBox and scales to its container; every label is HTML-escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

WIDTH, HEIGHT = 300, 210
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 10, 38


@dataclass
class Point:
    x: float
    y: float
    label: str  # tooltip
    href: str | None = None


def value_range(values: Sequence[float]) -> tuple[float, float]:
    """[0, 1] for scores that live there; widened (to -1 for correlations, say) when values leave it."""
    lo = min([0.0, *values])
    hi = max([1.0, *values])
    if lo < 0 and lo >= -1:
        lo = -1.0
    return lo, hi


def ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + 1e-9 * step:
        out.append(round(v, 10))
        v += step
    return out


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


class _Frame:
    """Maps data to pixels inside the plot area and draws axes with ticks and labels."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float]):
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        self.w = WIDTH - LEFT - RIGHT
        self.h = HEIGHT - TOP - BOTTOM

    def px(self, x: float) -> float:
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * self.w

    def py(self, y: float) -> float:
        return TOP + self.h - (y - self.y0) / (self.y1 - self.y0) * self.h

    def axes(self, x_label: str, y_label: str, y_ticks: list[float] | None = None) -> list[str]:
        parts = [f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{self.w}" height="{self.h}"/>']
        for t in ticks(self.x0, self.x1):
            x = self.px(t)
            parts.append(f'<line class="grid" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + self.h}"/>')
            parts.append(
                f'<text class="tick" x="{x:.1f}" y="{TOP + self.h + 14}" text-anchor="middle">{_fmt(t)}</text>'
            )
        for t in y_ticks if y_ticks is not None else ticks(self.y0, self.y1):
            y = self.py(t)
            parts.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + self.w}" y2="{y:.1f}"/>')
            parts.append(f'<text class="tick" x="{LEFT - 5}" y="{y + 3.5:.1f}" text-anchor="end">{_fmt(t)}</text>')
        parts.append(
            f'<text class="label" x="{LEFT + self.w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
            f"{escape(x_label)}</text>"
        )
        parts.append(
            f'<text class="label" transform="translate(12 {TOP + self.h / 2:.1f}) rotate(-90)" '
            f'text-anchor="middle">{escape(y_label)}</text>'
        )
        return parts


def _svg(parts: list[str], title: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>' + "".join(parts) + "</svg>"
    )


def histogram(
    values: Sequence[float], *, x_label: str, title: str, bins: int = 20, x_range: tuple[float, float] | None = None
) -> str:
    """Counts of `values` in equal bins, with the mean as a dashed line."""
    vals = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    lo, hi = x_range or value_range(vals.tolist())
    counts, edges = np.histogram(vals, bins=bins, range=(lo, hi))
    top = max(1, int(counts.max()) if len(counts) else 1)
    y_ticks = [t for t in ticks(0, top, 5) if float(t).is_integer()]
    frame = _Frame((lo, hi), (0, max(top, y_ticks[-1] if y_ticks else top)))
    parts = frame.axes(x_label, "latents", y_ticks)
    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        if c == 0:
            continue
        x, y = frame.px(a) + 0.5, frame.py(c)
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(1.0, frame.px(b) - frame.px(a) - 1):.1f}" '
            f'height="{frame.py(0) - y:.1f}"><title>{_fmt(a)}–{_fmt(b)}: {int(c)} '
            f"latent{'s' if c != 1 else ''}</title></rect>"
        )
    if len(vals):
        m = float(vals.mean())
        parts.append(
            f'<line class="mean" x1="{frame.px(m):.1f}" y1="{TOP}" x2="{frame.px(m):.1f}" '
            f'y2="{frame.py(0):.1f}"><title>mean {m:.3f}</title></line>'
        )
    return _svg(parts, title)


def scatter(points: Sequence[Point], *, x_label: str, y_label: str, title: str) -> str:
    """One dot per latent (a link to its page when `href` is set), with the diagonal y = x."""
    xs = [p.x for p in points]
    ys = [p.y for p in points]
    lo_x, hi_x = value_range(xs)
    lo_y, hi_y = value_range(ys)
    frame = _Frame((lo_x, hi_x), (lo_y, hi_y))
    parts = frame.axes(x_label, y_label)
    a, b = max(lo_x, lo_y), min(hi_x, hi_y)
    if a < b:
        parts.append(
            f'<line class="diagonal" x1="{frame.px(a):.1f}" y1="{frame.py(a):.1f}" '
            f'x2="{frame.px(b):.1f}" y2="{frame.py(b):.1f}"/>'
        )
    for p in points:
        dot = (
            f'<circle class="dot" cx="{frame.px(p.x):.1f}" cy="{frame.py(p.y):.1f}" r="4">'
            f"<title>{escape(p.label)}</title></circle>"
        )
        parts.append(f'<a href="{escape(p.href)}">{dot}</a>' if p.href else dot)
    return _svg(parts, title)
