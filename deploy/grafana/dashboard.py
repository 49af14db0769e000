"""The paystream Grafana dashboard, as code (grafanalib). Regenerate the committed JSON with

    .venv/bin/python deploy/grafana/dashboard.py > deploy/grafana/paystream.json

tests/deploy/test_dashboard.py checks that the file is what this makes, and that every metric
a panel queries is one the services export. Series carry the ``job`` label Prometheus gives
each scrape target (``paystream-<service>`` in docs/alerts.yml; the Helm chart's pods are
scraped through their prometheus.io annotations).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    RowPanel,
    Target,
    Template,
    Templating,
    TimeSeries,
)

DATASOURCE = "${datasource}"
RATE = "[$__rate_interval]"
JOB = 'job=~"$job"'
WIDTH, HEIGHT = 8, 8


def _panel(title: str, description: str, targets: list[tuple[str, str]], unit: str = "short",
           **extra: Any) -> TimeSeries:
    return TimeSeries(
        title=title, description=description, dataSource=DATASOURCE, unit=unit,
        targets=[Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + k), datasource=DATASOURCE)
                 for k, (expr, legend) in enumerate(targets)],
        **extra,
    )


# (row title, panels); each panel is one time series of the services' own metrics.
ROWS: list[tuple[str, list[TimeSeries]]] = [
    ("Requests: rate, errors, duration (per service)", [
        _panel("Request rate", "HTTP requests served per second, by service.",
               [(f"sum by (job) (rate(paystream_http_requests_total{{{JOB}}}{RATE}))", "{{job}}")], "reqps"),
        _panel("Errors", "Share of requests answered 5xx, by service.",
               [(f'sum by (job) (rate(paystream_http_requests_total{{{JOB}, status=~"5.."}}{RATE}))'
                 f" / sum by (job) (rate(paystream_http_requests_total{{{JOB}}}{RATE}))", "{{job}}")], "percentunit"),
        _panel("Duration p50 / p99", "HTTP request latency by service.",
               [(f"histogram_quantile(0.99, sum by (job, le) (rate(paystream_http_request_seconds_bucket{{{JOB}}}{RATE})))",
                 "p99 {{job}}"),
                (f"histogram_quantile(0.5, sum by (job, le) (rate(paystream_http_request_seconds_bucket{{{JOB}}}{RATE})))",
                 "p50 {{job}}")], "s"),
    ]),
    ("Events: lag, outbox, consumers", [
        _panel("Consumer lag", "Events waiting for each consumer (every copy reports the same figure: max).",
               [("max by (consumer) (paystream_consumer_lag)", "{{consumer}}")]),
        _panel("Outbox backlog", "Events written but not yet published to the bus, by service.",
               [(f"max by (job) (paystream_outbox_backlog{{{JOB}}})", "{{job}}")]),
        _panel("Events settled", "Events settled by consumers per second, by outcome.",
               [(f"sum by (consumer, outcome) (rate(paystream_events_consumed_total{RATE}))",
                 "{{consumer}} {{outcome}}")], "ops"),
        _panel("Batch duration p99", "Time to apply one batch of events, by consumer.",
               [(f"histogram_quantile(0.99, sum by (consumer, le) (rate(paystream_consumer_batch_seconds_bucket{RATE})))",
                 "{{consumer}}")], "s"),
        _panel("Dead letters", "Messages sent to the dead-letter table.",
               [(f"sum by (consumer) (increase(paystream_dead_letters_total{RATE}))", "{{consumer}}")]),
        _panel("Partitions held", "Partitions each copy holds the lease of.",
               [("sum by (consumer, instance) (paystream_partitions_held)", "{{consumer}} {{instance}}")]),
    ]),
    ("Resilience: breakers, bulkheads, readiness", [
        _panel("Circuit breakers", "0 closed, 1 half-open, 2 open.",
               [(f"max by (job, name) (paystream_circuit_breaker_state{{{JOB}}})", "{{job}} {{name}}")]),
        _panel("Bulkheads in use", "Share of each bulkhead's slots taken; /readyz fails above 90 %.",
               [(f"max by (job, name) (paystream_bulkhead_in_use{{{JOB}}})"
                 f" / max by (job, name) (paystream_bulkhead_capacity{{{JOB}}})", "{{job}} {{name}}")],
               "percentunit"),
        _panel("Bulkhead rejections", "Calls refused by a full bulkhead, per second.",
               [(f"sum by (job, name) (rate(paystream_bulkhead_rejected_total{{{JOB}}}{RATE}))", "{{job}} {{name}}")],
               "ops"),
        _panel("Readiness", "1 when the last /readyz of a copy passed; the lowest copy per service.",
               [(f"min by (job) (paystream_ready{{{JOB}}})", "{{job}}")]),
    ]),
    ("Money: ledger and webhooks", [
        _panel("Ledger postings per second",
               "Fraud decisions the ledger applied per second: each one a posting, a hold or a rejection.",
               [(f'sum(rate(paystream_events_consumed_total{{consumer="ledger", outcome="applied"}}{RATE}))',
                 "applied")], "ops"),
        _panel("Webhook failures", "Webhook attempts that failed (retry) or gave up (dead), per second.",
               [(f'sum by (result) (rate(paystream_webhook_attempts_total{{result=~"retry|dead"}}{RATE}))',
                 "{{result}}"),
                (f'sum(rate(paystream_webhook_attempts_total{{result="delivered"}}{RATE}))', "delivered")], "ops"),
        _panel("Screening deadline", "Payments sent to review because fraud did not decide in time.",
               [(f"sum(increase(paystream_screening_deadline_total{RATE}))", "to review")]),
    ]),
]


def dashboard() -> Dashboard:
    panels: list[Any] = []
    y = 0
    for title, row in ROWS:
        panels.append(RowPanel(title=title, gridPos=GridPos(h=1, w=24, x=0, y=y)))
        y += 1
        for k, panel in enumerate(row):
            panel.gridPos = GridPos(h=HEIGHT, w=WIDTH, x=(k % 3) * WIDTH, y=y + (k // 3) * HEIGHT)
            panels.append(panel)
        y += ((len(row) + 2) // 3) * HEIGHT
    return Dashboard(
        title="paystream",
        uid="paystream-overview",
        description="Per service rate, errors and duration; consumer lag; outbox; breakers and bulkheads; "
                    "readiness; ledger postings; webhook failures. Made by deploy/grafana/dashboard.py.",
        tags=["paystream"],
        timezone="utc",
        refresh="30s",
        panels=panels,
        templating=Templating(list=[
            Template(name="datasource", type="datasource", query="prometheus", label="Data source"),
            Template(name="job", label="Service", dataSource=DATASOURCE,
                     query="label_values(paystream_http_requests_total, job)",
                     includeAll=True, multi=True, default="$__all"),
        ]),
    ).auto_panel_ids()


def queries(data: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a generated dashboard: its panels' targets and its variables."""
    found = [t["expr"] for p in data["panels"] for t in p.get("targets", []) if t.get("expr")]
    for variable in data.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            found.append(str(variable["query"]))
    return found


def render() -> str:
    return json.dumps(dashboard().to_json_data(), cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
