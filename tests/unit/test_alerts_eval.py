"""`evaluate_alerts` says which rules of docs/alerts.yml a recording would have fired, and
when, by running the real promtool. Needs promtool (Debian: the ``prometheus`` package);
without it the tests that run it fail and say so in one line."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from paystream.tools.alerts_eval import (
    PROMTOOL_MISSING,
    AlertsOutcome,
    FiredAlert,
    PromtoolOutputError,
    alert_names,
    evaluate_alerts,
    parse_promtool_output,
    series_values,
)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "alerts.yml"
STEP = 5.0


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found (Debian: apt-get install prometheus)", pytrace=False)
    return path


def series(metric: str, samples: list[tuple[float, float]], /, **labels: str) -> dict[str, Any]:
    return {"name": metric, "labels": labels, "samples": [[t, v] for t, v in samples]}


def steady(value: float, seconds: int) -> list[tuple[float, float]]:
    # Scrapes land a little after each whole second, as the runner's do.
    return [(t + 0.03, value) for t in range(seconds)]


def evaluate(recorded: list[dict[str, Any]], duration: float) -> AlertsOutcome:
    outcome = evaluate_alerts(RULES, recorded, duration=duration, step=STEP, promtool=promtool())
    assert outcome.evaluated, outcome.note
    return outcome


def quiet_recording(seconds: int) -> list[dict[str, Any]]:
    return [
        series("up", steady(1, seconds), job="paystream-payments", instance="payments"),
        series("paystream_ready", steady(1, seconds), job="paystream-payments", instance="payments"),
        series("paystream_circuit_breaker_state", steady(0, seconds),
               job="paystream-payments", instance="payments", name="fraud"),
        series("paystream_consumer_lag", [(t + 0.03, float(t % 7)) for t in range(seconds)],
               job="paystream-ledger", instance="ledger-1", consumer="ledger"),
        series("paystream_outbox_backlog", steady(3, seconds), job="paystream-payments", instance="payments"),
    ]


def test_a_quiet_recording_fires_nothing() -> None:
    outcome = evaluate(quiet_recording(180), duration=180)
    assert outcome.fired == []
    assert "9 alert rules" in outcome.note


def test_readiness_flapping_fires_with_the_span_of_its_10m_window() -> None:
    # ready flips every 4 s for 40 s (10 changes; the 5th at 20 s), then stays up.
    flapping = [(t + 0.03, float((t // 4) % 2 == 0)) for t in range(40)] + steady(1, 200)[40:]
    recorded = [series("paystream_ready", flapping, job="paystream-ledger", instance="ledger-2")]
    outcome = evaluate(recorded, duration=200)
    assert outcome.fired == [FiredAlert(
        alert="PaystreamReadinessFlapping",
        labels={"job": "paystream-ledger", "instance": "ledger-2", "severity": "warn"},
        start=20.0,
        end=200.0,  # the changes stay inside changes()'s 10m window to the end of the run
    )]


def test_an_open_breaker_fires_once_it_has_been_open_for_its_1m() -> None:
    state = [(t + 0.03, 2.0 if 30 <= t < 130 else 0.0) for t in range(200)]
    recorded = [
        series("paystream_circuit_breaker_state", state, job="paystream-payments", instance="payments", name="fraud"),
        series("paystream_circuit_breaker_state", steady(0, 200),
               job="paystream-payments", instance="payments", name="ledger"),
    ]
    [fired] = evaluate(recorded, duration=200).fired
    assert fired.alert == "PaystreamCircuitOpen"
    assert fired.labels == {"job": "paystream-payments", "name": "fraud", "severity": "warn"}
    assert 90 <= fired.start <= 90 + STEP
    assert 125 <= fired.end < 130


def test_a_breaker_open_for_less_than_its_1m_does_not_fire() -> None:
    state = [(t + 0.03, 2.0 if 30 <= t < 80 else 0.0) for t in range(200)]
    recorded = [series("paystream_circuit_breaker_state", state,
                       job="paystream-payments", instance="payments", name="fraud")]
    assert evaluate(recorded, duration=200).fired == []


def test_a_down_target_s_series_go_stale_as_in_prometheus() -> None:
    # payments dies at 50 s with its breaker open: Prometheus marks the series stale, so
    # the breaker alert never fires, and the target being down does (after its 1m).
    up = [(t + 0.03, 1.0 if t < 50 else 0.0) for t in range(200)]
    breaker = [(t + 0.03, 2.0) for t in range(20, 50)]
    recorded = [
        series("up", up, job="paystream-payments", instance="payments"),
        series("paystream_circuit_breaker_state", breaker, job="paystream-payments", instance="payments", name="fraud"),
    ]
    [fired] = evaluate(recorded, duration=200).fired
    assert fired.alert == "PaystreamServiceNotReady"
    assert fired.labels == {"job": "paystream-payments", "instance": "payments", "severity": "page"}
    assert 110 <= fired.start <= 110 + STEP
    assert fired.end == 200


def test_two_alerts_firing_together_are_both_reported() -> None:
    recorded = [
        series("paystream_outbox_backlog", steady(900, 200), job="paystream-payments", instance="payments"),
        series("paystream_outbox_backlog", steady(700, 200), job="paystream-ledger", instance="ledger-1"),
    ]
    fired = evaluate(recorded, duration=200).fired
    assert sorted(f.labels["job"] for f in fired) == ["paystream-ledger", "paystream-payments"]
    assert {(f.alert, f.start, f.end) for f in fired} == {("PaystreamOutboxBacklog", 120.0, 200.0)}


def test_a_series_recorded_in_two_parts_is_evaluated_as_one() -> None:
    # A restarted process scraped under the same labels: promtool alone would keep the last part.
    flapping = [(t + 0.03, float(t % 2)) for t in range(20)]
    recorded = [
        series("paystream_ready", flapping, job="paystream-ledger", instance="ledger-2"),
        series("paystream_ready", steady(1, 60)[20:], instance="ledger-2", job="paystream-ledger"),
    ]
    [fired] = evaluate(recorded, duration=60).fired
    assert fired.alert == "PaystreamReadinessFlapping"
    assert fired.start == 5.0


def test_without_promtool_the_outcome_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    outcome = evaluate_alerts(RULES, quiet_recording(10), duration=10)
    assert outcome == AlertsOutcome(evaluated=False, note=PROMTOOL_MISSING, fired=[])
    assert "\n" not in outcome.note


def test_unreadable_rules_leave_them_unevaluated(tmp_path: Path) -> None:
    outcome = evaluate_alerts(tmp_path / "missing.yml", [], duration=10, promtool=promtool())
    assert not outcome.evaluated
    assert outcome.note.startswith("cannot read the alert rules: ")


def test_a_promtool_that_fails_unreadably_leaves_the_rules_unevaluated(tmp_path: Path) -> None:
    broken = tmp_path / "promtool"
    broken.write_text("#!/bin/sh\necho 'Unit Testing: x'\necho 'something else entirely' >&2\nexit 1\n")
    broken.chmod(0o755)
    outcome = evaluate_alerts(RULES, quiet_recording(10), duration=10, promtool=str(broken))
    assert outcome == AlertsOutcome(evaluated=False, note="promtool: something else entirely", fired=[])


def test_invalid_rules_leave_them_unevaluated_with_promtool_s_error(tmp_path: Path) -> None:
    rules = tmp_path / "alerts.yml"
    rules.write_text("groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: sum(\n")
    outcome = evaluate_alerts(rules, quiet_recording(10), duration=10, promtool=promtool())
    assert not outcome.evaluated
    assert outcome.note.startswith("promtool: ")
    assert outcome.fired == []


def test_the_alert_names_are_read_from_the_rules_file() -> None:
    names = alert_names(RULES.read_text())
    assert len(names) == 9
    assert names[0] == "PaystreamConsumerLagGrowing"
    assert "PaystreamReadinessFlapping" in names


def test_series_values_put_each_sample_at_its_nearest_second() -> None:
    samples = [(0.02, 1.0), (1.04, 2.5), (2.0, None), (3.97, 3.0), (4.1, float("nan"))]
    assert series_values(samples, 6, failed={5}) == "1.0 2.5 _ _ NaN stale"


FAILURE = """\
  FAILED:
    alertname: PaystreamOutboxBacklog, time: 2m5s, \n\
        exp:[], \n\
        got:[
            0:
              Labels:{alertname="PaystreamOutboxBacklog", job="paystream-\\"x\\"", severity="page"}
              Annotations:{summary="a, b"},
            1:
              Labels:{alertname="PaystreamOutboxBacklog", job="paystream-ledger", severity="page"}
              Annotations:{summary="c"}
            ]
"""


def test_the_parser_reads_every_alert_promtool_got() -> None:
    got = parse_promtool_output(1, "Unit Testing:  replay_test.yml\n\n\n", FAILURE)
    assert [(g.alert, g.time, g.labels["job"]) for g in got] == [
        ("PaystreamOutboxBacklog", 125.0, 'paystream-"x"'),
        ("PaystreamOutboxBacklog", 125.0, "paystream-ledger"),
    ]


def test_the_parser_reads_success_as_no_alert() -> None:
    assert parse_promtool_output(0, "Unit Testing:  replay_test.yml\n  SUCCESS\n\n", "") == []


@pytest.mark.parametrize(("returncode", "stdout", "stderr"), [
    (0, "Unit Testing:  t.yml\n  SUCCESS\n", "  WARNING: no file match pattern rules.yml\n"),
    (1, "Unit Testing:  t.yml\n", "  FAILED:\n1:98: parse error: unexpected identifier\n"),
    (1, "Unit Testing:  t.yml\n", FAILURE.replace("exp:[]", "exp:[ 0: x ]")),
    (1, "Unit Testing:  t.yml\n", FAILURE.replace("            ]\n", "")),
    (1, "Unit Testing:  t.yml\n", FAILURE.replace("time: 2m5s", "time: soon")),
    (1, "Unit Testing:  t.yml\n", "  FAILED:\n"),
    (2, "", "error: unknown flag\n"),
])
def test_the_parser_refuses_what_it_does_not_know(returncode: int, stdout: str, stderr: str) -> None:
    with pytest.raises(PromtoolOutputError):
        parse_promtool_output(returncode, stdout, stderr)
