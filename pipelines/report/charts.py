"""Small inline-SVG charts: no scripts, no external files, so report.html works offline."""

from __future__ import annotations

import html
from collections.abc import Sequence

WIDTH, HEIGHT = 520, 180
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 48, 28, 14
ALL_COLOR, KEPT_COLOR, LINE_COLOR, MARK_COLOR = "#c6d4e8", "#3f72af", "#3f72af", "#d1495b"


def _svg(title: str, body: str, width: int = WIDTH, height: int = HEIGHT) -> str:
    label = html.escape(title)
    return (
        f'<figure><svg class="chart" role="img" aria-label="{label}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">{body}</svg>'
        f"<figcaption>{label}</figcaption></figure>"
    )


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
    row, label_w, bar_w = 20, 190, 300
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
    return _svg(title, "".join(parts), label_w + bar_w + 70, row * len(items) + 8)


def _axes(x0: float, x1: float, y_max: float, xs: Sequence[float], log_scale: bool = False) -> str:
    plot_w, plot_h = WIDTH - PAD_LEFT - 10, HEIGHT - PAD_BOTTOM - PAD_TOP
    parts = [
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{PAD_LEFT + plot_w}" y2="{PAD_TOP + plot_h}" '
        'stroke="#888"/>',
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{PAD_TOP + plot_h}" stroke="#888"/>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 8}" text-anchor="end">{fmt_number(y_max)}</text>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + plot_h}" text-anchor="end">0</text>',
    ]
    for value in xs:
        x = _x(value, x0, x1, log_scale)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">{fmt_number(value)}</text>')
    return "".join(parts)


def _x(value: float, x0: float, x1: float, log_scale: bool) -> float:
    import math

    plot_w = WIDTH - PAD_LEFT - 10
    if log_scale and value > 0 and x0 > 0:
        frac = (math.log(value) - math.log(x0)) / max(math.log(x1) - math.log(x0), 1e-12)
    else:
        frac = (value - x0) / max(x1 - x0, 1e-12)
    return PAD_LEFT + plot_w * min(max(frac, 0.0), 1.0)


def histogram(
    title: str,
    edges: Sequence[float],
    counts: Sequence[int],
    kept: Sequence[int],
    thresholds: Sequence[float],
    log_scale: bool = False,
) -> str:
    """All documents (light) and kept documents (dark) per bin, thresholds as red dashed lines."""
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
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
        parts.append(
            f'<line class="threshold" x1="{x:.1f}" y1="{PAD_TOP}" x2="{x:.1f}" y2="{PAD_TOP + plot_h}" '
            f'stroke="{MARK_COLOR}" stroke-width="2" stroke-dasharray="4 3"/>'
            f'<text x="{x + 3:.1f}" y="{PAD_TOP + 10}" fill="{MARK_COLOR}">{fmt_number(t)}</text>'
        )
    ticks = [edges[0], edges[len(edges) // 2], edges[-1]]
    return _svg(title, _axes(x0, x1, top, ticks, log_scale) + "".join(parts))


def curve(title: str, xs: Sequence[float], ys: Sequence[float], current: float | None = None) -> str:
    """A line of ys over xs with the current threshold marked."""
    if not xs:
        return ""
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    top = max(max(ys), 1)
    x0, x1 = xs[0], xs[-1]
    points = " ".join(
        f"{_x(x, x0, x1, False):.1f},{PAD_TOP + plot_h - plot_h * y / top:.1f}"
        for x, y in zip(xs, ys, strict=True)
    )
    body = f'<polyline points="{points}" fill="none" stroke="{LINE_COLOR}" stroke-width="2"/>'
    if current is not None:
        x = _x(current, x0, x1, False)
        body += (
            f'<line class="threshold" x1="{x:.1f}" y1="{PAD_TOP}" x2="{x:.1f}" y2="{PAD_TOP + plot_h}" '
            f'stroke="{MARK_COLOR}" stroke-width="2" stroke-dasharray="4 3"/>'
        )
    return _svg(title, _axes(x0, x1, top, [x0, (x0 + x1) / 2, x1]) + body)
