"""The usage chart: tokens per day as bars, drawn on the server as SVG.

Inline SVG is markup, not script or style, so the strict CSP allows it; the
colours come from the stylesheet through class names. Nothing in it comes
from a visitor except numbers and ISO dates.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 220
LEFT, BOTTOM, TOP = 56, 28, 12


@dataclass(frozen=True, slots=True)
class Bar:
    day: str
    tokens: int


def days(until: date, count: int) -> list[str]:
    return [(until - timedelta(days=count - 1 - i)).isoformat() for i in range(count)]


def _nice(value: int) -> int:
    """A round axis maximum at or above ``value``."""
    if value <= 0:
        return 1
    magnitude = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def bar_chart(bars: list[Bar], title: str) -> Markup:
    top = _nice(max((bar.tokens for bar in bars), default=0))
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(len(bars), 1)
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>"]
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h * (1 - fraction)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{int(top * fraction):,}</text>")
    for i, bar in enumerate(bars):
        height = plot_h * bar.tokens / top
        x = LEFT + i * slot + slot * 0.15
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{TOP + plot_h - height:.1f}" width="{slot * 0.7:.1f}" '
                     f'height="{height:.1f}"><title>{escape(bar.day)}: {bar.tokens:,}</title></rect>')
        if i % max(1, len(bars) // 6) == 0:
            parts.append(f'<text class="axis" x="{x + slot * 0.35:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                         f"{escape(bar.day[5:])}</text>")
    parts.append("</svg>")
    return Markup("".join(parts))
