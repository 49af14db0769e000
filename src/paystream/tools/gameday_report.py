"""A gameday recording as two files: the JSON record and one self-contained HTML page.

`write_report` writes ``gameday-<scenario>-<UTC stamp>.json`` (the recording plus the
alert outcome) and the matching ``.html`` for the on-call engineer: the verdict, the
parameters, checks and figures, then charts. The page is inline CSS and inline SVG only
(no script, no font, image or link to fetch), so it opens anywhere, offline, as one file.

Every chart shares one time axis, seconds since the run started, with the fault window
shaded and the runner's events marked (numbered as in the events table), so a dip in one
chart lines up with its cause in another. This module turns the recording into what the
charts show (lines, strips); `paystream.tools.gameday_charts` draws them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from paystream.tools.alerts_eval import AlertsOutcome, FiredAlert
from paystream.tools.gameday_charts import Frame, Line, Strip, line_chart, strip_chart

BREAKER_LEVELS = ((0.0, "closed"), (1.0, "half-open"), (2.0, "open"))
READINESS_KEY = (("ready", "#2da44e"), ("not ready", "#cf222e"), ("scrape failed", "#3d3d3d"))
SEVERITY_COLOURS = {"page": "#cf222e", "warn": "#d4a72c"}
ALERT_KEY = (("page", SEVERITY_COLOURS["page"]), ("warn", SEVERITY_COLOURS["warn"]))

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
