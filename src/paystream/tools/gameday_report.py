"""A gameday recording as two files: the JSON record and one self-contained HTML page.

`write_report` writes ``gameday-<scenario>-<UTC stamp>.json`` (the recording plus the
alert outcome) and the matching ``.html`` for the on-call engineer: the verdict, the
parameters, checks and figures, then charts. The page is inline CSS and inline SVG only
(no script, no font, image or link to fetch), so it opens anywhere, offline, as one file.

Every chart shares one time axis, seconds since the run started, with the fault window
shaded and the runner's events marked (numbered as in the events table), so a dip in one
chart lines up with its cause in another. Charts are drawn by three small functions:
`line_chart` (throughput, latency, lag, breakers), `strip_chart` (readiness, alerts)
and the decorations they share (`fault_band`, `event_markers`, `time_axis`, `legend`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from paystream.tools.alerts_eval import AlertsOutcome, FiredAlert

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
BREAKER_LEVELS = ((0.0, "closed"), (1.0, "half-open"), (2.0, "open"))
READINESS_KEY = (("ready", "#2da44e"), ("not ready", "#cf222e"), ("scrape failed", "#3d3d3d"))
SEVERITY_COLOURS = {"page": "#cf222e", "warn": "#d4a72c"}
ALERT_KEY = (("page", SEVERITY_COLOURS["page"]), ("warn", SEVERITY_COLOURS["warn"]))
NO_SAMPLE = "#e6e6e6"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto;
       max-width: 1040px; color: #1f2328; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #d0d7de; }
.verdict { font-size: 1.15em; font-weight: 600; padding: 0.5em 0.8em; border-radius: 6px; }
.verdict.ok { background: #dafbe1; color: #1a7f37; border: 1px solid #1a7f37; }
.verdict.fail { background: #ffebe9; color: #cf222e; border: 1px solid #cf222e; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pass { color: #1a7f37; font-weight: 600; }
td.fail { color: #cf222e; font-weight: 600; }
.note { color: #57606a; font-style: italic; }
svg { display: block; margin: 0.8em 0; font-size: 11px; }
svg text { fill: #1f2328; }
svg .title { font-size: 13px; font-weight: 600; }
svg .axis { stroke: #57606a; stroke-width: 1; }
svg .grid { stroke: #d8dee4; stroke-width: 1; }
svg .fault { fill: #ffcecb; fill-opacity: 0.55; }
svg .fault-edge { stroke: #a40e26; stroke-width: 1.5; }
svg .event { stroke: #6e7781; stroke-width: 1; stroke-dasharray: 3 3; }
"""


def write_report(recording: dict[str, Any], alerts: AlertsOutcome, out_dir: Path) -> tuple[Path, Path]:
    """Write the recording's JSON and HTML report into ``out_dir`` (created); return (json, html)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"gameday-{slug(str(recording.get('scenario', 'unknown')))}-{report_stamp(recording)}"
    json_path = out_dir / f"{stem}.json"
    html_path = out_dir / f"{stem}.html"
    record = {**recording, "alerts": dataclasses.asdict(alerts)}
    json_path.write_text(json.dumps(record) + "\n", encoding="utf-8")  # compact: series are long
    html_path.write_text(render_html(recording, alerts), encoding="utf-8")
    return json_path, html_path


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "unknown"


def report_stamp(recording: Mapping[str, Any]) -> str:
    """The run's start in UTC as ``20261207T100000Z`` (now, when the recording has none)."""
    started = recording.get("params", {}).get("started_at")
    moment = datetime.now(UTC)
    if isinstance(started, str):
        try:
            parsed = datetime.fromisoformat(started)
        except ValueError:
            parsed = None
        if parsed is not None:
            moment = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


# --- the page -------------------------------------------------------------------------


def render_html(recording: Mapping[str, Any], alerts: AlertsOutcome) -> str:
    """The whole report page: one HTML document with inline CSS and SVG."""
    scenario = str(recording.get("scenario", "unknown"))
    verdict = recording.get("verdict", {})
    ok = bool(verdict.get("ok"))
    line = str(verdict.get("line", f"gameday {scenario}: no verdict recorded"))
    frame = Frame.of(recording)
    series: list[dict[str, Any]] = recording.get("series", [])
    body = [
        f"<h1>gameday {escape(scenario)}</h1>",
        f'<p class="verdict {"ok" if ok else "fail"}">{escape(line)}</p>',
        "<h2>Parameters</h2>",
        parameters_table(recording.get("params", {}), recording.get("fault")),
        "<h2>Checks</h2>",
        checks_table(verdict.get("checks", [])),
        "<h2>Figures</h2>",
        key_value_table(recording.get("figures", {})),
        "<h2>Events</h2>",
        events_table(frame.events),
        "<h2>Charts</h2>",
        line_chart("Payments per second", throughput_lines(recording.get("seconds", [])), frame,
                   y_label="payments / s"),
        line_chart("Latency p99 (ms)", latency_lines(recording.get("seconds", [])), frame,
                   y_label="ms (log scale)", log=True),
        line_chart("Consumer lag (max over instances)",
                   max_lines(series, "paystream_consumer_lag", ("consumer",)), frame, y_label="events"),
        line_chart("Circuit breakers (0 closed, 1 half-open, 2 open)",
                   max_lines(series, "paystream_circuit_breaker_state", ("job", "name")), frame,
                   y_label="state", levels=BREAKER_LEVELS, steps=True),
        strip_chart("Readiness per instance", readiness_rows(series), frame, key=READINESS_KEY, background="no sample"),
        "<h2>Alerts</h2>",
        alerts_section(alerts, frame),
    ]
    title = escape(f"gameday {scenario}: {'PASS' if ok else 'FAIL'}")
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def parameters_table(params: Mapping[str, Any], fault: Mapping[str, Any] | None) -> str:
    rows = dict(params)
    if fault:
        rows["fault"] = f"{fault.get('label', '')} (from {seconds(fault.get('start'))} to {seconds(fault.get('end'))})"
    return key_value_table(rows)


def key_value_table(values: Mapping[str, Any]) -> str:
    if not values:
        return '<p class="note">none recorded</p>'
    rows = []
    for key, value in values.items():
        css = ' class="num"' if isinstance(value, int | float) and not isinstance(value, bool) else ""
        rows.append(f"<tr><th>{escape(str(key))}</th><td{css}>{escape(show(value))}</td></tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    if not checks:
        return '<p class="note">no checks recorded</p>'
    rows = ["<tr><th>check</th><th>result</th><th>detail</th></tr>"]
    for check in checks:
        ok = bool(check.get("ok"))
        rows.append(
            f"<tr><td>{escape(str(check.get('name', '')))}</td>"
            f'<td class="{"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</td>'
            f"<td>{escape(show(check.get('detail', '')))}</td></tr>"
        )
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def events_table(events: Sequence[tuple[float, str]]) -> str:
    if not events:
        return '<p class="note">the runner recorded no events</p>'
    rows = ["<tr><th>#</th><th>at</th><th>what</th></tr>"]
    for index, (t, what) in enumerate(events, start=1):
        rows.append(f'<tr><td class="num">{index}</td><td class="num">{seconds(t)}</td><td>{escape(what)}</td></tr>')
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def alerts_section(alerts: AlertsOutcome, frame: Frame) -> str:
    note = f'<p class="note">{escape(alerts.note)}</p>'
    if not alerts.evaluated:
        return f'<p class="verdict fail">alert rules not evaluated</p>\n{note}'
    if not alerts.fired:
        return f"<p>No alert rule would have fired.</p>\n{note}"
    rows = [alert_row(alert) for alert in alerts.fired]
    chart = strip_chart("Alerts that would have fired", rows, frame, key=ALERT_KEY, background="not firing")
    return "\n".join([note, chart, fired_table(alerts.fired)])


def alert_row(alert: FiredAlert) -> Strip:
    colour = SEVERITY_COLOURS.get(alert.labels.get("severity", ""), "#8250df")
    return Strip(label=alert_label(alert), segments=[(alert.start, alert.end, colour)])


def alert_label(alert: FiredAlert) -> str:
    """Short enough for the chart: the name without its prefix, then the label values."""
    name = alert.alert.removeprefix("Paystream")
    values = [value for key, value in sorted(alert.labels.items()) if key != "severity"]
    return f"{name} {'/'.join(values)}".strip()


def fired_table(fired: Sequence[FiredAlert]) -> str:
    rows = ["<tr><th>alert</th><th>labels</th><th>firing from</th><th>to</th></tr>"]
    for alert in fired:
        labels = ", ".join(f"{key}={value}" for key, value in sorted(alert.labels.items()))
        rows.append(
            f"<tr><td>{escape(alert.alert)}</td><td>{escape(labels)}</td>"
            f'<td class="num">{seconds(alert.start)}</td><td class="num">{seconds(alert.end)}</td></tr>'
        )
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def show(value: Any) -> str:
    """A parameter, figure or detail as one line of text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.6g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={show(item)}" for key, item in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(show(item) for item in value)
    return str(value)


def seconds(value: Any) -> str:
    return f"{value:g} s" if isinstance(value, int | float) else "?"


# --- what the charts show -------------------------------------------------------------


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


def throughput_lines(rows: Sequence[Mapping[str, Any]]) -> list[Line]:
    return [
        Line("offered", column(rows, "offered"), "#7f7f7f", dashed=True),
        Line("accepted", column(rows, "accepted"), "#1f77b4"),
        Line("completed", column(rows, "completed"), "#2ca02c"),
    ]


def latency_lines(rows: Sequence[Mapping[str, Any]]) -> list[Line]:
    return [
        Line("API p99", column(rows, "api_p99_ms"), "#1f77b4"),
        Line("end-to-end p99", column(rows, "e2e_p99_ms"), "#ff7f0e"),
    ]


def column(rows: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float | None]]:
    points: list[tuple[float, float | None]] = []
    for row in rows:
        value = row.get(key)
        points.append((float(row["t"]), float(value) if isinstance(value, int | float) else None))
    return points


def per_second(samples: Iterable[Sequence[float]]) -> dict[int, float]:
    """Samples keyed by their nearest whole second (the last one wins; None is no sample)."""
    by_second = {}
    for t, value in samples:
        if value is not None:
            by_second[round(t)] = float(value)
    return by_second


def max_lines(series: Sequence[Mapping[str, Any]], metric: str, by: Sequence[str]) -> list[Line]:
    """``max by (<by>) (metric)`` per second, one line per group, labelled by its values."""
    groups: dict[tuple[str, ...], dict[int, float]] = defaultdict(dict)
    for one in series:
        if one.get("name") != metric:
            continue
        key = tuple(str(one.get("labels", {}).get(label, "")) for label in by)
        best = groups[key]
        for second, value in per_second(one.get("samples", [])).items():
            if second not in best or value > best[second]:
                best[second] = value
    lines = []
    for key in sorted(groups):
        values = groups[key]
        lines.append(Line(" / ".join(key), gaps_broken(values)))
    return lines


def gaps_broken(values: Mapping[int, float]) -> list[tuple[float, float | None]]:
    """Per-second points with a None wherever a second is missing, so the line breaks."""
    points: list[tuple[float, float | None]] = []
    previous: int | None = None
    for second in sorted(values):
        if previous is not None and second > previous + 1:
            points.append((previous + 1.0, None))
        points.append((float(second), values[second]))
        previous = second
    return points


def readiness_rows(series: Sequence[Mapping[str, Any]]) -> list[Strip]:
    """One row per (job, instance): ready, not ready, or its scrape failed (``up`` 0)."""
    ready: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    up: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for one in series:
        labels = one.get("labels", {})
        target = (str(labels.get("job", "")), str(labels.get("instance", "")))
        if one.get("name") == "paystream_ready":
            ready[target].update(per_second(one.get("samples", [])))
        elif one.get("name") == "up":
            up[target].update(per_second(one.get("samples", [])))
    colours = dict(READINESS_KEY)
    rows = []
    for target in sorted(set(ready) | set(up)):
        states: dict[int, str] = {}
        for second, value in up[target].items():
            if value == 0:
                states[second] = colours["scrape failed"]
        for second, value in ready[target].items():
            states[second] = colours["ready"] if value >= 1 else colours["not ready"]
        rows.append(Strip(label=f"{target[0]} / {target[1]}", segments=segments(states)))
    return rows


def segments(states: Mapping[int, str]) -> list[tuple[float, float, str]]:
    """Per-second colours merged into (start, end, colour) runs, each second ±0.5 s."""
    runs: list[tuple[float, float, str]] = []
    for second in sorted(states):
        colour = states[second]
        if runs and runs[-1][2] == colour and runs[-1][1] == second - 0.5:
            runs[-1] = (runs[-1][0], second + 0.5, colour)
        else:
            runs.append((second - 0.5, second + 0.5, colour))
    return runs


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
