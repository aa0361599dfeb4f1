"""Inline SVG charts for server-rendered pages and reports: axes with units, time labels, a limit line, and
a text label on every coloured mark (colour never carries the meaning alone). No script, no build step."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["bars", "nice_max"]

W, H = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 16, 40
PLOT_W, PLOT_H = W - LEFT - RIGHT, H - TOP - BOTTOM
OK, BAD, LIMIT = "#2e7d32", "#c62828", "#6a1b9a"


def nice_max(value: float) -> float:
    """A round axis top at or above ``value`` (1, 2, 2.5, 5 x 10^n)."""
    if value <= 0:
        return 1.0
    step = 10 ** (len(str(int(value))) - 1) if value >= 1 else 0.1
    while True:
        for m in (1, 2, 2.5, 5, 10):
            if m * step >= value:
                return m * step
        step *= 10


def bars(labels: Sequence[str], values: Sequence[float | None], *, unit: str, title: str,
         limit: float | None = None, limit_label: str = "", over_is_bad: bool = True, every: int = 1) -> str:
    """A bar chart: y axis in ``unit`` with ticks, x labels (every ``every``-th), a dashed limit line with its
    label; a bar beyond the limit is red and marked "!" (over, or under when ``over_is_bad`` is False)."""
    plot = _Plot(nice_max(max([v for v in values if v is not None] + [limit or 0.0, 0.0]) * 1.05), max(len(values), 1))
    out = [f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
           f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">',
           f"<title>{escape(title)}</title>", *plot.y_axis(unit)]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        if value is not None:
            bad = limit is not None and (value > limit if over_is_bad else value < limit)
            out.append(plot.bar(i, label, value, unit, bad=bad))
        if i % every == 0:
            out.append(f'<text x="{plot.x(i) + plot.slot / 2:.1f}" y="{H - BOTTOM + 14}" text-anchor="middle">'
                       f"{escape(label)}</text>")
    out.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#333"/>'
               f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{H - BOTTOM}" y2="{H - BOTTOM}" stroke="#333"/>')
    if limit is not None:
        out.append(plot.limit_line(limit, limit_label or f"limit {limit:g}"))
    out.append(f'<text x="{LEFT + PLOT_W / 2:.0f}" y="{H - 6}" text-anchor="middle">{escape(title)}</text></svg>')
    return "".join(out)


class _Plot:
    """The plot area's coordinates: ``top`` the value at its top edge, ``n`` bar slots across."""

    def __init__(self, top: float, n: int) -> None:
        self.top, self.slot = top, PLOT_W / n

    def x(self, i: int) -> float:
        return LEFT + i * self.slot

    def y(self, v: float) -> float:
        return TOP + PLOT_H * (1 - v / self.top)

    def y_axis(self, unit: str) -> list[str]:
        """Five ticks with their grid lines, and the unit along the axis."""
        ticks = [f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{self.y(v):.1f}" y2="{self.y(v):.1f}" stroke="#ddd"/>'
                 f'<text x="{LEFT - 4}" y="{self.y(v) + 4:.1f}" text-anchor="end">{v:g}</text>'
                 for v in (self.top * i / 4 for i in range(5))]
        return [*ticks, f'<text x="12" y="{TOP + PLOT_H / 2:.0f}" transform="rotate(-90 12 {TOP + PLOT_H / 2:.0f})" '
                        f'text-anchor="middle">{escape(unit)}</text>']

    def bar(self, i: int, label: str, v: float, unit: str, *, bad: bool) -> str:
        """A bar with its value in a tooltip; a bad one red and marked "!" (a mark that is not colour alone)."""
        x, slot = self.x(i), self.slot
        rect = (f'<rect x="{x + slot * 0.15:.1f}" y="{self.y(max(v, 0)):.1f}" width="{slot * 0.7:.1f}" '
                f'height="{PLOT_H * max(v, 0) / self.top:.1f}" fill="{BAD if bad else OK}">'
                f"<title>{escape(label)}: {v:.4g} {escape(unit)}</title></rect>")
        mark = (f'<text x="{x + slot / 2:.1f}" y="{self.y(max(v, 0)) - 2:.1f}" text-anchor="middle" '
                f'fill="{BAD}" font-weight="bold">!</text>') if bad else ""
        return rect + mark

    def limit_line(self, limit: float, label: str) -> str:
        y = self.y(limit)
        return (f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{LIMIT}" '
                f'stroke-dasharray="6 3" stroke-width="1.5"/><text x="{W - RIGHT}" y="{y - 4:.1f}" '
                f'text-anchor="end" fill="{LIMIT}">{escape(label)}</text>')
