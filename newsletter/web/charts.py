"""Charts drawn on the server as SVG: the geometry here, the markup in `_charts.html`.

No script and no library: a chart is a few rectangles whose sizes are computed from the
figures, with a title and a description for assistive technology. Every chart on a page
comes with a table of the same numbers; the chart is for the glance, the table for reading.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Room around the plot for the axis labels (left) and the bar labels (bottom), in SVG units.
AXIS = 44
FOOT = 22
HEAD = 18


@dataclass(frozen=True)
class Bar:
    """One bar: its label and value, where it is drawn, and an optional note above it."""

    label: str
    value: int
    x: float
    y: float
    width: float
    height: float
    note: str = ""
    # Whether the label is printed under the bar (a month of days labels every seventh).
    show_label: bool = True


@dataclass(frozen=True)
class Tick:
    """A gridline of the value axis: its value and the height it is drawn at."""

    value: int
    at: float


@dataclass(frozen=True)
class Chart:
    """A bar chart ready to draw: `horizontal` bars grow rightwards from their labels."""

    title: str
    description: str
    width: int
    height: int
    bars: list[Bar]
    ticks: list[Tick]
    horizontal: bool = False


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 25, 50, 100, ... that is at least `value` (at least 1).

    (2.5 is a step only from 10 up, where it stays a whole number, halved or not.)
    """
    if value <= 1:
        return 1
    power: int = 10 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        candidate = int(step * power)
        if candidate >= value and candidate == step * power and (step != 2.5 or power >= 10):
            return candidate
    return 10 * power  # pragma: no cover - the loop always returns


def columns(
    title: str,
    description: str,
    points: Sequence[tuple[str, int]],
    *,
    notes: Sequence[str] = (),
    label_every: int = 1,
    width: int = 640,
    height: int = 200,
) -> Chart:
    """Vertical bars, one per (label, value), on a value axis from 0 to a round maximum."""
    top = nice_ceiling(max((value for _, value in points), default=0))
    plot_w, plot_h = width - AXIS, height - FOOT - HEAD
    slot = plot_w / max(1, len(points))
    gap = min(8.0, slot * 0.2)
    bars = []
    for index, (label, value) in enumerate(points):
        h = plot_h * value / top
        bars.append(
            Bar(
                label=label,
                value=value,
                x=round(AXIS + index * slot + gap / 2, 2),
                y=round(HEAD + plot_h - h, 2),
                width=round(slot - gap, 2),
                height=round(h, 2),
                note=notes[index] if index < len(notes) else "",
                # Counted back from the last bar, so that the latest one is always labelled.
                show_label=(len(points) - 1 - index) % label_every == 0,
            )
        )
    ticks = [
        Tick(value, round(HEAD + plot_h - plot_h * value / top, 2)) for value in (0, top // 2, top)
    ]
    return Chart(title, description, width, height, bars, _distinct(ticks))


def rows(
    title: str,
    description: str,
    points: Sequence[tuple[str, int]],
    *,
    width: int = 640,
    row_height: int = 28,
    label_width: int = 120,
) -> Chart:
    """Horizontal bars, one row per (label, value), scaled to the largest value."""
    top = nice_ceiling(max((value for _, value in points), default=0))
    plot_w = width - label_width - 80  # room on the right for the value
    bars = []
    for index, (label, value) in enumerate(points):
        bars.append(
            Bar(
                label=label,
                value=value,
                x=label_width,
                y=index * row_height + 4,
                width=round(plot_w * value / top, 2),
                height=row_height - 8,
            )
        )
    return Chart(title, description, width, row_height * len(points), bars, [], horizontal=True)


def _distinct(ticks: list[Tick]) -> list[Tick]:
    # An axis up to 1 would label 0 twice (0 // 2 == 0).
    kept: list[Tick] = []
    for tick in ticks:
        if all(tick.value != other.value for other in kept):
            kept.append(tick)
    return kept
