"""Small inline-SVG charts: no scripts, no external files, so report.html works offline.

Each chart is a figure with its title above it; every label is placed so that it stays inside the
chart's viewBox (labels near an edge are anchored towards the inside), and axes carry about five
rounded ticks.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

WIDTH, HEIGHT = 520, 190
PAD_LEFT, PAD_RIGHT, PAD_BOTTOM, PAD_TOP = 48, 16, 28, 16
PLOT_W, PLOT_H = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_BOTTOM - PAD_TOP
CHAR_W = 6.2  # upper estimate of one character's width at the charts' 10px font
TICKS = 5
ALL_COLOR, KEPT_COLOR, LINE_COLOR, MARK_COLOR = "#c6d4e8", "#3f72af", "#3f72af", "#d1495b"


def _svg(title: str, body: str, width: int = WIDTH, height: int = HEIGHT) -> str:
    label = html.escape(title)
    return (
        f'<figure><figcaption>{label}</figcaption><svg class="chart" role="img" aria-label="{label}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg">{body}</svg></figure>'
    )


def _label(x: float, y: float, text: str, width: float = WIDTH, color: str | None = None) -> str:
    """A text centred on x, or anchored towards the inside where centring would cross an edge."""
    half = CHAR_W * len(text) / 2
    if x - half < 1:
        anchor = "start"
        x = max(x, 1.0)
    elif x + half > width - 1:
        anchor = "end"
        x = min(x, width - 1.0)
    else:
        anchor = "middle"
    fill = f' fill="{color}"' if color else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{fill}>{html.escape(text)}</text>'


def nice_ticks(low: float, high: float, count: int = TICKS) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) between low and high."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def log_ticks(low: float, high: float) -> list[float]:
    """Powers of ten between low and high (thinned to at most TICKS + 2), else the ends."""
    ticks = [10.0**k for k in range(math.ceil(math.log10(low)), math.floor(math.log10(high)) + 1)]
    while len(ticks) > TICKS + 2:
        ticks = ticks[::2]
    return ticks if len(ticks) >= 2 else [low, high]


def fmt_number(value: float) -> str:
    """Short tick labels: 1.2k, 3.4M, 0.05."""
    magnitude = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def hbars(title: str, items: Sequence[tuple[str, float]]) -> str:
    """Horizontal bars with labels and values."""
    if not items:
        return ""
    row, bar_w = 20, 300
    label_w = round(CHAR_W * max(len(str(label)) for label, _ in items) + 12)
    value_w = round(CHAR_W * max(len(fmt_number(v)) for _, v in items) + 10)
    top = max(v for _, v in items) or 1
    parts = []
    for i, (label, value) in enumerate(items):
        y = 4 + i * row
        width = max(1.0, bar_w * value / top)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{html.escape(str(label))}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row - 6}" fill="{KEPT_COLOR}"/>'
            f'<text x="{label_w + width + 5:.1f}" y="{y + 14}">{fmt_number(value)}</text>'
        )
    return _svg(title, "".join(parts), label_w + bar_w + value_w, row * len(items) + 8)


def _axes(x0: float, x1: float, y_max: float, log_scale: bool = False) -> str:
    """Both axes with rounded ticks and light grid lines; y runs from 0 to y_max."""
    bottom = PAD_TOP + PLOT_H
    parts = [
        f'<line x1="{PAD_LEFT}" y1="{bottom}" x2="{PAD_LEFT + PLOT_W}" y2="{bottom}" stroke="#888"/>',
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{bottom}" stroke="#888"/>',
    ]
    for value in nice_ticks(0, y_max):
        y = bottom - PLOT_H * value / y_max
        parts.append(
            f'<line x1="{PAD_LEFT}" y1="{y:.1f}" x2="{PAD_LEFT + PLOT_W}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{PAD_LEFT - 4}" y="{y + 3.5:.1f}" text-anchor="end">{fmt_number(value)}</text>'
        )
    xs = log_ticks(x0, x1) if log_scale and x0 > 0 else nice_ticks(x0, x1)
    for value in xs:
        x = _x(value, x0, x1, log_scale)
        parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 3}" stroke="#888"/>')
        parts.append(_label(x, HEIGHT - 8, fmt_number(value)))
    return "".join(parts)


def _x(value: float, x0: float, x1: float, log_scale: bool) -> float:
    if log_scale and value > 0 and x0 > 0:
        frac = (math.log(value) - math.log(x0)) / max(math.log(x1) - math.log(x0), 1e-12)
    else:
        frac = (value - x0) / max(x1 - x0, 1e-12)
    return PAD_LEFT + PLOT_W * min(max(frac, 0.0), 1.0)


def _threshold(x: float) -> str:
    """A threshold's dashed line (its value is labelled separately by `_threshold_label`)."""
    return (
        f'<line class="threshold" x1="{x:.1f}" y1="{PAD_TOP}" x2="{x:.1f}" y2="{PAD_TOP + PLOT_H}" '
        f'stroke="{MARK_COLOR}" stroke-width="2" stroke-dasharray="4 3"/>'
    )


def _threshold_label(x: float, value: float) -> str:
    """The threshold's value just right of its line, or left of it near the right edge."""
    text = fmt_number(value)
    if x + 3 + CHAR_W * len(text) > WIDTH - 1:
        return f'<text x="{x - 3:.1f}" y="{PAD_TOP - 4}" text-anchor="end" fill="{MARK_COLOR}">{text}</text>'
    return f'<text x="{x + 3:.1f}" y="{PAD_TOP - 4}" fill="{MARK_COLOR}">{text}</text>'


def histogram(
    title: str,
    edges: Sequence[float],
    counts: Sequence[int],
    kept: Sequence[int],
    thresholds: Sequence[float],
    log_scale: bool = False,
) -> str:
    """All documents (light) and kept documents (dark) per bin, thresholds as red dashed lines."""
    plot_h = PLOT_H
    top = max(max(counts, default=0), 1)
    x0, x1 = edges[0], edges[-1]
    parts = []
    for i, (n_all, n_kept) in enumerate(zip(counts, kept, strict=True)):
        left, right = _x(edges[i], x0, x1, log_scale), _x(edges[i + 1], x0, x1, log_scale)
        for n, color in ((n_all, ALL_COLOR), (n_kept, KEPT_COLOR)):
            h = plot_h * n / top
            parts.append(
                f'<rect x="{left:.1f}" y="{PAD_TOP + plot_h - h:.1f}" '
                f'width="{max(right - left - 1, 0.5):.1f}" '
                f'height="{h:.1f}" fill="{color}"><title>{fmt_number(edges[i])}–{fmt_number(edges[i + 1])}: '
                f"{n_all} documents, {n_kept} kept</title></rect>"
            )
    for t in thresholds:
        x = _x(t, x0, x1, log_scale)
        parts.append(_threshold(x) + _threshold_label(x, t))
    return _svg(title, _axes(x0, x1, top, log_scale) + "".join(parts))


def curve(title: str, xs: Sequence[float], ys: Sequence[float], current: float | None = None) -> str:
    """A line of ys over xs with the current threshold marked."""
    if not xs:
        return ""
    plot_h = PLOT_H
    top = max(max(ys), 1)
    x0, x1 = xs[0], xs[-1]
    points = " ".join(
        f"{_x(x, x0, x1, False):.1f},{PAD_TOP + plot_h - plot_h * y / top:.1f}"
        for x, y in zip(xs, ys, strict=True)
    )
    body = f'<polyline points="{points}" fill="none" stroke="{LINE_COLOR}" stroke-width="2"/>'
    if current is not None:
        x = _x(current, x0, x1, False)
        body += _threshold(x) + _threshold_label(x, current)
    return _svg(title, _axes(x0, x1, top) + body)


SERIES_COLORS = ("#3f72af", "#d1495b", "#2a9d8f", "#e9a03b", "#7b5ea7", "#6c757d", "#8c564b", "#17becf")


def lines(title: str, series: Sequence[tuple[str, Sequence[float], Sequence[float]]]) -> str:
    """Several named lines over one x axis, y from the lowest to the highest value, with a legend."""
    xs = [x for _, line_xs, _ in series for x in line_xs]
    ys = [y for _, _, line_ys in series for y in line_ys]
    if not xs:
        return ""
    x0, x1 = min(xs), max(xs)
    y_ticks = nice_ticks(min(ys), max(ys))
    y0, y1 = min(y_ticks[0], min(ys)), max(y_ticks[-1], max(ys))
    y1 = y1 if y1 > y0 else y0 + 1.0
    bottom = PAD_TOP + PLOT_H

    def y_of(value: float) -> float:
        return bottom - PLOT_H * (value - y0) / (y1 - y0)

    parts = [
        f'<line x1="{PAD_LEFT}" y1="{bottom}" x2="{PAD_LEFT + PLOT_W}" y2="{bottom}" stroke="#888"/>',
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{bottom}" stroke="#888"/>',
    ]
    for value in y_ticks:
        y = y_of(value)
        parts.append(
            f'<line x1="{PAD_LEFT}" y1="{y:.1f}" x2="{PAD_LEFT + PLOT_W}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{PAD_LEFT - 4}" y="{y + 3.5:.1f}" text-anchor="end">{fmt_number(value)}</text>'
        )
    for value in nice_ticks(x0, x1):
        x = _x(value, x0, x1, False)
        parts.append(_label(x, HEIGHT - 8, fmt_number(value)))
    legend_y = HEIGHT + 4
    for i, (name, line_xs, line_ys) in enumerate(series):
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        coords = " ".join(
            f"{_x(x, x0, x1, False):.1f},{y_of(y):.1f}" for x, y in zip(line_xs, line_ys, strict=True)
        )
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        lx, ly = PAD_LEFT + (i % 3) * 160, legend_y + (i // 3) * 14
        parts.append(
            f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{color}"/>'
            f'<text x="{lx + 14}" y="{ly + 9}">{html.escape(name)}</text>'
        )
    return _svg(title, "".join(parts), height=legend_y + 14 * math.ceil(len(series) / 3) + 4)
