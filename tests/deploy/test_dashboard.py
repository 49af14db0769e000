"""deploy/grafana/paystream.json is what deploy/grafana/dashboard.py (grafanalib) makes, and
every metric its panels query is one the services export.

The exported set is read from the code: the prometheus_client registry of the `Metrics` every
process builds, plus the collectors services register on it themselves (webhook attempts,
re-screens, the screening deadline), each made by the real constructor."""

from __future__ import annotations

import importlib.util
import json
import re
from types import ModuleType

import pytest

from paystream.fraud.rescreen import rescreen_counter
from paystream.notifications.store import NotificationsStore
from paystream.notifications.workers import DeliveryWorker
from paystream.payments.deadline import deadline_counter
from paystream.platform.config import Settings
from paystream.platform.observability import Metrics
from tests.deploy.manifests import ROOT

GRAFANA = ROOT / "deploy" / "grafana"
KEYWORDS = {"by", "without", "and", "or", "unless", "offset", "bool", "on", "ignoring", "group_left",
            "group_right", "inf", "nan"}


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("paystream_dashboard", GRAFANA / "dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exported_metrics() -> set[str]:
    """Every series name a paystream process can export, from its real registry."""
    metrics = Metrics("any")
    DeliveryWorker(None, NotificationsStore(), Settings(), metrics)  # type: ignore[arg-type]
    rescreen_counter(metrics)
    deadline_counter(metrics)
    names: set[str] = set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "gauge": ("",), "summary": ("", "_count", "_sum", "_created")}
    for family in metrics.registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values() query) selects."""
    expr = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,[^)]*\)", r"\1", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][\w:]*", expr):
        word = match.group(0)
        follows = expr[match.end():].lstrip()[:1]
        if follows == "(" or word.lower() in KEYWORDS or word.startswith("$"):
            continue
        names.add(word)
    return names


def test_the_committed_dashboard_is_what_the_code_makes() -> None:
    committed = (GRAFANA / "paystream.json").read_text()
    assert generator().render() == committed, \
        "deploy/grafana/paystream.json is stale: run .venv/bin/python deploy/grafana/dashboard.py > it"


def test_every_metric_a_panel_queries_is_exported() -> None:
    exported = exported_metrics()
    data = json.loads((GRAFANA / "paystream.json").read_text())
    queried = {name for expr in generator().queries(data) for name in metric_names(expr)}
    assert queried, "no metric found in the dashboard's queries"
    assert queried <= exported, f"not exported by any service: {sorted(queried - exported)}"


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    data = json.loads((GRAFANA / "paystream.json").read_text())
    queried = {name for expr in generator().queries(data) for name in metric_names(expr)}
    for wanted in ("paystream_http_requests_total", "paystream_http_request_seconds_bucket",
                   "paystream_consumer_lag", "paystream_outbox_backlog", "paystream_circuit_breaker_state",
                   "paystream_bulkhead_in_use", "paystream_ready", "paystream_events_consumed_total",
                   "paystream_webhook_attempts_total"):
        assert wanted in queried, wanted


@pytest.mark.parametrize("expr,names", [
    ('sum by (job) (rate(paystream_http_requests_total{job=~"$job", status=~"5.."}[$__rate_interval]))',
     {"paystream_http_requests_total"}),
    ("histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m]))) / ignoring(x) b", {"a_bucket", "b"}),
    ("label_values(paystream_http_requests_total, job)", {"paystream_http_requests_total"}),
])
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_panel_naming_a_metric_nobody_exports_is_caught() -> None:
    exported = exported_metrics()
    assert "paystream_consumer_lag" in exported
    assert not metric_names("max by (consumer) (paystream_consumer_lag_events)") <= exported
