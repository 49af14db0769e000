"""`write_report` leaves a gameday's JSON record and one self-contained HTML page: the
verdict, tables and SVG charts on one time axis, with nothing to fetch and no script."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from paystream.tools.alerts_eval import AlertsOutcome, FiredAlert
from paystream.tools.gameday_charts import Frame, decades, nice_ticks
from paystream.tools.gameday_report import max_lines, readiness_rows, render_html, segments, write_report

CHART_TITLES = (
    "Payments per second",
    "Latency p99 (ms)",
    "Consumer lag (max over instances)",
    "Circuit breakers (0 closed, 1 half-open, 2 open)",
    "Readiness per instance",
    "Alerts that would have fired",
)
VERDICT = "gameday fraud-slow: FAIL — lag did not return to 0 within 60 s"
FIRED = AlertsOutcome(
    evaluated=True,
    note="9 alert rules checked every 5 s from 0 to 60 s: 1 firing span(s)",
    fired=[FiredAlert(alert="PaystreamReadinessFlapping",
                      labels={"job": "paystream-fraud", "instance": "fraud-1", "severity": "warn"},
                      start=35.0, end=60.0)],
)


def series(metric: str, values: list[float], /, **labels: str) -> dict[str, Any]:
    return {"name": metric, "labels": labels, "samples": [[t + 0.04, v] for t, v in enumerate(values)]}


def recording(**changes: Any) -> dict[str, Any]:
    seconds = 60
    during = [20 <= t < 40 for t in range(seconds)]
    base: dict[str, Any] = {
        "scenario": "fraud-slow",
        "params": {"rate": 30.0, "minutes": 1.0, "cpu_cores": 2, "screening_deadline_s": 2.0,
                   "scale": {"payments": 1, "fraud": 2}, "nats_nodes": 1,
                   "started_at": "2026-12-07T11:00:00+01:00"},
        "fault": {"start": 20.0, "end": 40.0, "label": "fraud decisions take 4 s"},
        "events": [{"t": 21.3, "what": "SIGKILL fraud-2 <&>"}],
        "seconds": [{"t": t, "offered": 30, "accepted": 30, "completed": 8 if during[t] else 28,
                     "api_p99_ms": 12.5, "e2e_p99_ms": 4100.0 if during[t] else None} for t in range(seconds)],
        "series": [
            series("paystream_consumer_lag", [200.0 if d else 0.0 for d in during],
                   job="paystream-ledger", instance="ledger-1", consumer="ledger"),
            series("paystream_consumer_lag", [228.0 if d else 1.0 for d in during],
                   job="paystream-ledger", instance="ledger-2", consumer="ledger"),
            series("paystream_circuit_breaker_state", [2.0 if d else 0.0 for d in during],
                   job="paystream-payments", instance="payments", name="fraud"),
            series("paystream_ready", [0.0 if d and t % 2 else 1.0 for t, d in enumerate(during)],
                   job="paystream-fraud", instance="fraud-1"),
            series("up", [1.0] * seconds, job="paystream-fraud", instance="fraud-1"),
        ],
        "figures": {"peak_lag": 228, "lag_zero_after_fault_s": 25.5, "sent_to_review_by_deadline": 545},
        "verdict": {"ok": False, "line": VERDICT, "checks": [
            {"name": "every accepted payment ended once", "ok": True, "detail": "1800 of 1800"},
            {"name": "lag back to 0 within 60 s", "ok": False, "detail": "lag 1 at 60 s"},
        ]},
    }
    base.update(changes)
    return base


@pytest.fixture
def html() -> str:
    return render_html(recording(), FIRED)


def test_the_report_writes_json_and_html_named_for_scenario_and_utc_start(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "today"
    json_path, html_path = write_report(recording(), FIRED, out)
    assert json_path == out / "gameday-fraud-slow-20261207T100000Z.json"
    assert html_path == out / "gameday-fraud-slow-20261207T100000Z.html"
    assert json_path.is_file()
    assert html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_the_json_round_trips_the_recording_with_the_alerts_added(tmp_path: Path) -> None:
    json_path, _ = write_report(recording(), FIRED, tmp_path)
    loaded = json.loads(json_path.read_text(encoding="utf-8"))
    alerts = loaded.pop("alerts")
    assert loaded == recording()
    assert alerts == {"evaluated": True, "note": FIRED.note, "fired": [
        {"alert": "PaystreamReadinessFlapping",
         "labels": {"job": "paystream-fraud", "instance": "fraud-1", "severity": "warn"},
         "start": 35.0, "end": 60.0},
    ]}


def test_the_page_has_no_script_and_nothing_to_fetch(html: str) -> None:
    lowered = html.lower()
    for forbidden in ("<script", "http://", "https://", "url(", "@import", "<link", "<img", " src=", " href="):
        assert forbidden not in lowered, forbidden


def test_the_page_shows_the_verdict_line_in_red_when_the_gameday_failed(html: str) -> None:
    assert '<p class="verdict fail">gameday fraud-slow: FAIL — lag did not return to 0 within 60 s</p>' in html
    assert "<title>gameday fraud-slow: FAIL</title>" in html


def test_a_passing_gameday_shows_its_verdict_in_green() -> None:
    verdict = {"ok": True, "line": "gameday kill: PASS", "checks": []}
    assert '<p class="verdict ok">gameday kill: PASS</p>' in render_html(recording(verdict=verdict), FIRED)


def test_the_page_shows_parameters_checks_and_figures(html: str) -> None:
    assert "<tr><th>scale</th><td>payments=1, fraud=2</td></tr>" in html
    assert '<td>lag back to 0 within 60 s</td><td class="fail">FAIL</td><td>lag 1 at 60 s</td>' in html
    assert '<tr><th>lag_zero_after_fault_s</th><td class="num">25.5</td></tr>' in html


@pytest.mark.parametrize("title", CHART_TITLES)
def test_the_page_draws_each_chart(html: str, title: str) -> None:
    assert f"<title>{title}</title>" in html


def test_every_chart_is_well_formed_svg(html: str) -> None:
    charts = re.findall(r"<svg.*?</svg>", html, flags=re.DOTALL)
    assert len(charts) == len(CHART_TITLES)
    for chart in charts:
        ET.fromstring(chart)


def test_every_chart_shades_the_fault_window_and_marks_the_events(html: str) -> None:
    assert html.count('<rect class="fault"') == len(CHART_TITLES)
    assert html.count("fault: fraud decisions take 4 s</text>") == len(CHART_TITLES)
    assert html.count("<title>1: SIGKILL fraud-2 &lt;&amp;&gt; at 21.3 s</title>") == len(CHART_TITLES)


def test_text_from_the_recording_is_escaped(html: str) -> None:
    assert "SIGKILL fraud-2 <&>" not in html
    assert "<td>SIGKILL fraud-2 &lt;&amp;&gt;</td>" in html


def test_the_page_shows_the_fired_alerts_as_bars_and_in_a_table(html: str) -> None:
    assert "<title>ReadinessFlapping fraud-1/paystream-fraud: 35 to 60 s</title>" in html
    assert ('<td>PaystreamReadinessFlapping</td><td>instance=fraud-1, job=paystream-fraud, severity=warn</td>'
            '<td class="num">35 s</td><td class="num">60 s</td>') in html


def test_unevaluated_alerts_show_the_note_and_no_alert_chart() -> None:
    note = "promtool not found (Debian: apt-get install prometheus); alert rules not evaluated"
    page = render_html(recording(), AlertsOutcome(evaluated=False, note=note, fired=[]))
    assert f'<p class="note">{note}</p>' in page
    assert "alert rules not evaluated</p>" in page
    assert "<title>Alerts that would have fired</title>" not in page


def test_a_quiet_evaluation_says_no_alert_fired() -> None:
    page = render_html(recording(), AlertsOutcome(evaluated=True, note="checked", fired=[]))
    assert "<p>No alert rule would have fired.</p>" in page


def test_a_recording_without_fault_events_or_series_still_renders() -> None:
    page = render_html(recording(fault=None, events=[], series=[], seconds=[]), FIRED)
    assert page.count("no data recorded") == 5  # every chart but the alerts
    assert '<rect class="fault"' not in page


def test_lag_is_the_max_over_instances_per_second() -> None:
    [ledger] = max_lines(recording()["series"], "paystream_consumer_lag", ("consumer",))
    assert ledger.label == "ledger"
    assert ledger.points[0] == (0.0, 1.0)
    assert ledger.points[25] == (25.0, 228.0)


def test_a_gap_in_the_samples_breaks_the_line() -> None:
    lag = [{"name": "lag", "labels": {"c": "x"}, "samples": [[0, 1.0], [1, 2.0], [5, 3.0]]}]
    [line] = max_lines(lag, "lag", ("c",))
    assert line.points == [(0.0, 1.0), (1.0, 2.0), (2.0, None), (5.0, 3.0)]


def test_readiness_rows_show_failed_scrapes_and_runs_of_one_state() -> None:
    recorded = [
        series("paystream_ready", [1.0, 1.0, 1.0], job="j", instance="i"),
        series("up", [1.0, 1.0, 1.0, 0.0, 0.0], job="j", instance="i"),
    ]
    [row] = readiness_rows(recorded)
    assert row.label == "j / i"
    assert [(start, end) for start, end, _ in row.segments] == [(-0.5, 2.5), (2.5, 4.5)]


def test_segments_merge_only_adjacent_seconds_of_one_colour() -> None:
    assert segments({0: "g", 1: "g", 3: "g", 4: "r"}) == [(-0.5, 1.5, "g"), (2.5, 3.5, "g"), (3.5, 4.5, "r")]


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0, 228) == [0, 50, 100, 150, 200, 250]
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 120, 10) == [0, 20, 40, 60, 80, 100, 120]


def test_log_ticks_are_the_decades_around_the_values() -> None:
    assert decades([12.5, 4100.0, 0.0]) == [10.0, 100.0, 1000.0, 10000.0]
    assert decades([]) == [1.0, 10.0]


def test_the_time_axis_spans_the_planned_run_at_least() -> None:
    assert Frame.of(recording(seconds=[], series=[], events=[], fault=None)).end == 60
    assert Frame.of(recording(events=[{"t": 75.2, "what": "restart"}])).end == 76
