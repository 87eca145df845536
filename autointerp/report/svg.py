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


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)


def histogram(
    values: Sequence[float],
    *,
    x_label: str,
    title: str,
    bins: int = 20,
    x_range: tuple[float, float] | None = None,
    control: Sequence[float] | None = None,
) -> str:
    """Counts of `values` in equal bins, with the mean as a dashed line; `control` (the same metric
    with shuffled labels) is drawn over them as outlined bars, its mean dotted."""
    vals = _finite(values)
    ctrl = _finite(control or [])
    lo, hi = x_range or value_range(vals.tolist() + ctrl.tolist())
    counts, edges = np.histogram(vals, bins=bins, range=(lo, hi))
    control_counts, _ = np.histogram(ctrl, bins=bins, range=(lo, hi))
    top = max(1, int(counts.max()) if len(counts) else 1, int(control_counts.max()) if len(ctrl) else 1)
    y_ticks = [t for t in ticks(0, top, 5) if float(t).is_integer()]
    frame = _Frame((lo, hi), (0, max(top, y_ticks[-1] if y_ticks else top)))
    parts = frame.axes(x_label, "latents", y_ticks)
    for cls, what, series in (("bar", "", counts), ("bar control", "control ", control_counts)):
        for c, a, b in zip(series, edges[:-1], edges[1:], strict=True):
            if c == 0:
                continue
            x, y = frame.px(a) + 0.5, frame.py(c)
            parts.append(
                f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{max(1.0, frame.px(b) - frame.px(a) - 1):.1f}" '
                f'height="{frame.py(0) - y:.1f}"><title>{what}{_fmt(a)}–{_fmt(b)}: {int(c)} '
                f"latent{'s' if c != 1 else ''}</title></rect>"
            )
    for cls, what, series in (("mean", "mean", vals), ("mean control", "control mean", ctrl)):
        if len(series):
            m = float(series.mean())
            parts.append(
                f'<line class="{cls}" x1="{frame.px(m):.1f}" y1="{TOP}" x2="{frame.px(m):.1f}" '
                f'y2="{frame.py(0):.1f}"><title>{what} {m:.3f}</title></line>'
            )
    return _svg(parts, title)


@dataclass
class Series:
    """One line of a line chart: y (None where there is no value) at each x, with an error bar each."""

    name: str
    y: list[float | None]
    error: list[float | None]  # half-length of the error bar (a standard error); None for none
    control: bool = False  # drawn dashed and grey: the chance level the other line is read against


def lines(xs: Sequence[float], series: Sequence[Series], *, x_label: str, y_label: str, title: str) -> str:
    """Values in [0, 1] against `xs`, one line per series with its error bars, and a legend."""
    lo, hi = min(xs), max(xs)
    frame = _Frame((lo - 0.5, hi + 0.5), (0.0, 1.0))
    parts = frame.axes(x_label, y_label)
    for k, s in enumerate(series):
        kind = " control" if s.control else ""
        cls = "line" + kind
        points = [(x, y, e) for x, y, e in zip(xs, s.y, s.error, strict=True) if y is not None and not math.isnan(y)]
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{frame.px(x):.1f},{frame.py(y):.1f}" for i, (x, y, _) in enumerate(points)
        )
        if path:
            parts.append(f'<path class="{cls}" d="{path}"/>')
        for x, y, e in points:
            if e is not None and not math.isnan(e) and e > 0:
                top, bottom = frame.py(min(1.0, y + e)), frame.py(max(0.0, y - e))
                parts.append(
                    f'<line class="err{kind}" x1="{frame.px(x):.1f}" y1="{top:.1f}" '
                    f'x2="{frame.px(x):.1f}" y2="{bottom:.1f}"/>'
                )
            se = "" if e is None or math.isnan(e) else f" ± {e:.3f}"
            parts.append(
                f'<circle class="pt{kind}" cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="2.5">'
                f"<title>{escape(s.name)}, {_fmt(x)}: {y:.3f}{se}</title></circle>"
            )
        # the legend goes bottom right, where accuracy rising with activation leaves room
        lx, ly = WIDTH - RIGHT - 88, HEIGHT - BOTTOM - 8 - 13 * (len(series) - 1 - k)
        parts.append(f'<line class="{cls}" x1="{lx}" y1="{ly - 3.5}" x2="{lx + 18}" y2="{ly - 3.5}"/>')
        parts.append(f'<text class="legend" x="{lx + 22}" y="{ly:.1f}">{escape(s.name)}</text>')
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
