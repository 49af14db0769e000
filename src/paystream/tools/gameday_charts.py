"""The game day report's charts as inline SVG: one time axis for all, the fault window shaded.

Charts are drawn by three small functions: `line_chart` (throughput, latency, lag, breakers),
`strip_chart` (readiness, alerts) and the decorations they share (`fault_band`,
`event_markers`, `time_axis`, `legend`). `Frame` is what every chart shares: the run's time
axis, its fault window and the runner's events.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

# Chart geometry, in SVG pixels: the plot sits between the y-axis labels on the left
# and the legend on the right; every chart has the same plot width so time lines up.
WIDTH = 1000
LEFT = 80
RIGHT = 270
TOP = 34
PLOT_HEIGHT = 180
BOTTOM = 42
ROW_HEIGHT = 18  # strip charts
LEGEND_LINE = 16
PLOT_WIDTH = WIDTH - LEFT - RIGHT

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
NO_SAMPLE = "#e6e6e6"


@dataclass(frozen=True)
class Line:
    """One line of a line chart; a None value breaks the line."""

    label: str
    points: list[tuple[float, float | None]]
    colour: str | None = None
    dashed: bool = False


@dataclass(frozen=True)
class Strip:
    """One row of a strip chart: coloured (start, end, colour) segments on a grey row."""

    label: str
    segments: list[tuple[float, float, str]]


# --- drawing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """What every chart shares: the time axis, the fault window and the runner's events."""

    end: float
    fault: tuple[float, float, str] | None
    events: list[tuple[float, str]]

    @classmethod
    def of(cls, recording: Mapping[str, Any]) -> Frame:
        fault = recording.get("fault")
        window = None
        if fault and isinstance(fault.get("start"), int | float) and isinstance(fault.get("end"), int | float):
            window = (float(fault["start"]), float(fault["end"]), str(fault.get("label", "fault")))
        events = [(float(e["t"]), str(e.get("what", ""))) for e in recording.get("events", [])]
        return cls(end=run_end(recording), fault=window, events=sorted(events, key=lambda e: e[0]))

    def x(self, t: float) -> float:
        """The horizontal pixel of time ``t``, clamped to the plot."""
        return LEFT + PLOT_WIDTH * min(max(t, 0.0), self.end) / self.end


def run_end(recording: Mapping[str, Any]) -> float:
    """The last second anything in the recording speaks of (at least the planned run)."""
    ends = [float(recording.get("params", {}).get("minutes") or 0) * 60]
    ends += [float(row["t"]) for row in recording.get("seconds", [])]
    ends += [float(e["t"]) for e in recording.get("events", [])]
    for one in recording.get("series", []):
        ends += [float(t) for t, _ in one.get("samples", [])[-1:]]
    fault = recording.get("fault") or {}
    ends += [float(fault[key]) for key in ("start", "end") if isinstance(fault.get(key), int | float)]
    return max(1.0, math.ceil(max(ends)))


@dataclass(frozen=True)
class YScale:
    """Vertical pixels of values from ``low`` (plot bottom) to ``high`` (plot top).

    On a ``log`` scale (``low`` > 0) a value below ``low`` sits on the bottom line.
    """

    low: float
    high: float
    log: bool = False

    def y(self, value: float) -> float:
        low, high = self.low, self.high
        if self.log:
            low, high, value = math.log10(low), math.log10(high), math.log10(max(value, low))
        span = high - low or 1.0
        return TOP + PLOT_HEIGHT * (1 - (value - low) / span)


def nice_ticks(low: float, high: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten apart) from below ``low`` to above ``high``."""
    if high <= low:
        high = low + 1
    raw = (high - low) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = 10 * magnitude
    for factor in (1, 2, 2.5, 5):
        if factor * magnitude >= raw:
            step = factor * magnitude
            break
    first = math.floor(low / step)
    last = math.ceil(high / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def decades(values: Sequence[float]) -> list[float]:
    """Powers of ten from below the smallest positive value to above the largest (log ticks)."""
    positive = [v for v in values if v > 0] or [1.0]
    first = math.floor(math.log10(min(positive)))
    last = max(math.ceil(math.log10(max(positive))), first + 1)
    return [10.0**exponent for exponent in range(first, last + 1)]


def number(value: float) -> str:
    if abs(value) >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def line_chart(
    title: str,
    lines: Sequence[Line],
    frame: Frame,
    *,
    y_label: str,
    levels: Sequence[tuple[float, str]] | None = None,
    steps: bool = False,
    log: bool = False,
) -> str:
    """A time-series chart: one polyline per `Line`, y ticks (or named ``levels``), legend.

    ``steps`` draws each value flat until the next, for states rather than quantities;
    ``log`` puts the y axis on a log scale, for values that span decades (latencies).
    """
    values = [v for line in lines for _, v in line.points if v is not None]
    if levels is not None:
        ticks = [(value, label) for value, label in levels]
    elif log:
        ticks = [(value, number(value)) for value in decades(values)]
    else:
        ticks = [(value, number(value)) for value in nice_ticks(min([0.0, *values]), max([1.0, *values]))]
    scale = YScale(ticks[0][0], ticks[-1][0], log=log)
    coloured = [(line, line.colour or PALETTE[i % len(PALETTE)]) for i, line in enumerate(lines)]
    parts = [svg_open(title, chart_height(len(lines))), fault_band(frame)]
    for value, label in ticks:
        y = scale.y(value)
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + PLOT_WIDTH}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
    parts.append(
        f'<text x="12" y="{TOP + PLOT_HEIGHT / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + PLOT_HEIGHT / 2:.0f})">{escape(y_label)}</text>'
    )
    for line, colour in coloured:
        path = line_path(line.points, frame, scale, steps=steps)
        if path:
            dash = ' stroke-dasharray="6 3"' if line.dashed else ""
            parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.6"{dash}>'
                         f"<title>{escape(line.label)}</title></path>")
    if not values:
        parts.append(no_data())
    parts += [event_markers(frame), time_axis(frame, TOP + PLOT_HEIGHT),
              legend([(line.label, colour) for line, colour in coloured]), "</svg>"]
    return "\n".join(parts)


def line_path(points: Sequence[tuple[float, float | None]], frame: Frame, scale: YScale, *, steps: bool) -> str:
    """SVG path data through the points, a new ``M`` after each gap."""
    commands: list[str] = []
    previous_y: float | None = None
    for t, value in points:
        if value is None:
            previous_y = None
            continue
        x, y = frame.x(t), scale.y(value)
        if previous_y is None:
            commands.append(f"M{x:.1f} {y:.1f}")
        elif steps:
            commands.append(f"H{x:.1f} V{y:.1f}")
        else:
            commands.append(f"L{x:.1f} {y:.1f}")
        previous_y = y
    return " ".join(commands)


def strip_chart(
    title: str, rows: Sequence[Strip], frame: Frame, *, key: Sequence[tuple[str, str]], background: str
) -> str:
    """One labelled row per `Strip`, coloured as ``key`` says, grey (``background``) elsewhere."""
    bottom = TOP + max(len(rows), 1) * ROW_HEIGHT
    parts = [svg_open(title, bottom + BOTTOM), fault_band(frame, bottom=bottom)]
    for index, row in enumerate(rows):
        top = TOP + index * ROW_HEIGHT + 3
        parts.append(f'<rect x="{LEFT}" y="{top}" width="{PLOT_WIDTH}" height="{ROW_HEIGHT - 6}" fill="{NO_SAMPLE}"/>')
        for start, end, colour in row.segments:
            x = frame.x(start)
            width = max(frame.x(end) - x, 3.0)
            parts.append(f'<rect x="{x:.1f}" y="{top}" width="{width:.1f}" height="{ROW_HEIGHT - 6}" '
                         f'fill="{colour}"><title>{escape(row.label)}: {start:g} to {end:g} s</title></rect>')
        parts.append(f'<text x="{LEFT + PLOT_WIDTH + 10}" y="{top + ROW_HEIGHT - 8}">{escape(clip(row.label))}'
                     f"<title>{escape(row.label)}</title></text>")
    if not rows:
        parts.append(no_data())
    # The rows hide the band behind them: the window's edges are drawn over them.
    parts += [fault_edges(frame, bottom=bottom), event_markers(frame, bottom=bottom),
              time_axis(frame, bottom), colour_key([*key, (background, NO_SAMPLE)]), "</svg>"]
    return "\n".join(parts)


def svg_open(title: str, height: float) -> str:
    """The ``<svg>`` start with its accessible ``<title>`` and the visible title."""
    return (
        f'<svg width="{WIDTH}" height="{height:.0f}" viewBox="0 0 {WIDTH} {height:.0f}" role="img">\n'
        f"<title>{escape(title)}</title>\n"
        f'<text class="title" x="{LEFT}" y="16">{escape(title)}</text>'
    )


def chart_height(legend_entries: int) -> float:
    return max(TOP + PLOT_HEIGHT + BOTTOM, TOP + legend_entries * LEGEND_LINE + 8)


def fault_band(frame: Frame, *, bottom: float = TOP + PLOT_HEIGHT) -> str:
    """The fault window as a shaded band, labelled, behind the data."""
    if frame.fault is None:
        return ""
    start, end, label = frame.fault
    x = frame.x(start)
    return (
        f'<rect class="fault" x="{x:.1f}" y="{TOP}" width="{max(frame.x(end) - x, 1.0):.1f}" '
        f'height="{bottom - TOP:.0f}"><title>fault: {escape(label)} ({start:g} to {end:g} s)</title></rect>\n'
        f'<text x="{x + 3:.1f}" y="{TOP - 4}" fill="#a40e26">fault: {escape(clip(label, 60))}</text>'
    )


def fault_edges(frame: Frame, *, bottom: float) -> str:
    """The fault window's start and end as lines, for charts that cover the band."""
    if frame.fault is None:
        return ""
    parts = []
    for t in frame.fault[:2]:
        x = frame.x(t)
        parts.append(f'<line class="fault-edge" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom:.0f}"/>')
    return "\n".join(parts)


def event_markers(frame: Frame, *, bottom: float = TOP + PLOT_HEIGHT) -> str:
    """A dashed line per runner event, numbered as in the events table."""
    parts = []
    label_x = -math.inf
    for index, (t, what) in enumerate(frame.events, start=1):
        x = frame.x(t)
        label_x = max(x, label_x + 7 * len(str(index)) + 6)  # close events: numbers side by side
        parts.append(
            f'<g><title>{index}: {escape(what)} at {t:g} s</title>'
            f'<line class="event" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom:.0f}"/>'
            f'<text x="{label_x:.1f}" y="{bottom + 28:.0f}" text-anchor="middle" fill="#57606a">{index}</text></g>'
        )
    return "\n".join(parts)


def time_axis(frame: Frame, bottom: float) -> str:
    """The shared x axis: seconds since the run started."""
    parts = [f'<line class="axis" x1="{LEFT}" y1="{bottom:.0f}" x2="{LEFT + PLOT_WIDTH}" y2="{bottom:.0f}"/>']
    for t in nice_ticks(0, frame.end, 10):
        if t > frame.end:
            continue
        x = frame.x(t)
        parts.append(f'<line class="axis" x1="{x:.1f}" y1="{bottom:.0f}" x2="{x:.1f}" y2="{bottom + 4:.0f}"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 15:.0f}" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="{LEFT + PLOT_WIDTH:.0f}" y="{bottom + 38:.0f}" text-anchor="end">'
                 "seconds since start (events numbered)</text>")
    return "\n".join(parts)


def legend(entries: Sequence[tuple[str, str]]) -> str:
    """(label, colour) swatches stacked to the right of the plot."""
    parts = []
    x = LEFT + PLOT_WIDTH + 12
    for index, (label, colour) in enumerate(entries):
        y = TOP + index * LEGEND_LINE
        parts.append(f'<rect x="{x}" y="{y + 3}" width="14" height="4" fill="{colour}"/>')
        parts.append(f'<text x="{x + 20}" y="{y + 9}">{escape(clip(label))}<title>{escape(label)}</title></text>')
    return "\n".join(parts)


def colour_key(entries: Sequence[tuple[str, str]]) -> str:
    """What a strip chart's colours mean, in its title line."""
    parts = []
    x = LEFT + PLOT_WIDTH - 10
    for label, colour in reversed(entries):
        x -= 8 + 7 * len(label)
        parts.append(f'<rect x="{x}" y="7" width="10" height="10" fill="{colour}" stroke="#8c959f" stroke-width="0.5"/>'
                     f'<text x="{x + 14}" y="16">{escape(label)}</text>')
        x -= 14
    return "\n".join(parts)


def no_data() -> str:
    return (f'<text x="{LEFT + PLOT_WIDTH / 2:.0f}" y="{TOP + 40}" text-anchor="middle" '
            'fill="#57606a">no data recorded</text>')


def clip(text: str, limit: int = 42) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
