"""`paystream gameday SCENARIO`: a fault injected into a stack under steady open-loop load,
recorded second by second, judged, and written up as a report.

The run lasts ``minutes``; the fault takes its middle third (the *window*). Load is the
bench's: transfers between funded wallets, small enough that fraud approves them, but sent
open-loop at ``rate`` per second, so a slow system meets a growing queue as it would in
production. Every second the runner asks each process of each service ``/readyz`` and
reads its ``/metrics`` (as a Kubernetes probe and Prometheus would), and it counts what
the API offered, accepted and completed.

Scenarios (the window is [D/3, 2D/3] of a run of D seconds):

* ``fraud-slow`` (seed 001): fraud's decisions take 4 s during the window, 50 ms otherwise;
* ``kill``: a random copy of a random service is SIGKILLed every ``kill_every`` seconds;
* ``nats-node``: the NATS node leading the PAYMENTS stream is SIGKILLed at the window's
  start and kept down until its end (needs ``--nats-cluster 3``);
* ``postgres-restart``: PostgreSQL is stopped with a fast shutdown at the window's start,
  then crashed (SIGKILL of the postmaster) half-way through, each time kept down a few
  seconds and started again by the stack's supervisor;
* ``redis-down``: Redis is stopped for the window.

A server is kept down through the supervisor's hold files (``<home>/run/<name>.hold``,
see stack/process.py); everything else is signals to the pids in ``<home>/run``.

The verdict passes only if every accepted payment ended exactly once (or waits in review
with its funds held), nothing was applied twice, the money invariants and `ledger verify`
hold, the API answered no 5xx but 503, and consumer lag was back to zero within 60 s of the
fault's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from paystream.contracts.topology import SERVICES
from paystream.platform.checks import CheckReport
from paystream.platform.config import load_settings
from paystream.stack.scale import ScaleError, parse_scale
from paystream.tools.bench import BenchPlan
from paystream.tools.client import FraudFaults, PaystreamClient
from paystream.tools.gameday_faults import NORMAL_DECISION_MS, SCENARIOS
from paystream.tools.gameday_stack import GamedayError, Sampler, StackHandle, Timeline
from paystream.tools.gameday_verdict import (
    LAG_RECOVERY_SECONDS,
    Announcements,
    api_check,
    lag_check,
    ledger_checks,
    per_second,
    run_figures,
)
from paystream.tools.load import EngineOptions, LoadEngine
from paystream.tools.load_runs import create_wallets, registered_receiver, run_with_progress

__all__ = ["GamedayError", "GamedayOptions", "check_options", "fresh_stack_env", "run_gameday"]

WEBHOOK_GRACE_SECONDS = 30.0  # for the last webhooks (retries back off) once all is terminal
REPO_ALERT_RULES = Path(__file__).resolve().parents[3] / "docs" / "alerts.yml"




@dataclass(frozen=True, slots=True, kw_only=True)
class GamedayOptions:
    scenario: str
    rate: float = 30.0  # payments per second, open loop
    minutes: float = 3.0
    home: Path | None = None  # the running stack's (ignored with fresh)
    fresh: bool = False
    report_dir: Path | None = None
    accounts: int | None = None
    kill_every: float = 5.0
    seed: int = 20261207
    # With --fresh only: how the stack is started.
    scale: str | None = None
    nats_nodes: int | None = None
    screening_deadline: float | None = None
    alert_rules: Path | None = None

    @property
    def duration(self) -> float:
        return self.minutes * 60

    @property
    def window(self) -> tuple[float, float]:
        return self.duration / 3, 2 * self.duration / 3


def check_options(options: GamedayOptions) -> None:
    """What can be refused before anything starts."""
    if options.scenario not in SCENARIOS:
        raise GamedayError(f"unknown scenario {options.scenario!r}; one of: {', '.join(SCENARIOS)}")
    if not options.rate > 0 or not math.isfinite(options.rate):
        raise GamedayError(f"--rate must be a positive number of payments per second, not {options.rate}")
    if not options.minutes > 0 or options.minutes > 120:
        raise GamedayError(f"--minutes must be above 0 and at most 120, not {options.minutes}")
    if not options.fresh:
        for flag, value in (("--scale", options.scale), ("--nats-cluster", options.nats_nodes),
                            ("--screening-deadline", options.screening_deadline)):
            if value is not None:
                raise GamedayError(f"{flag} sets up a stack: it needs --fresh (a running stack keeps its own)")
    if options.screening_deadline is not None and options.screening_deadline < 0:
        raise GamedayError("--screening-deadline must be 0 (off) or more seconds")
    if not options.kill_every > 0:
        raise GamedayError(f"--kill-every must be a positive number of seconds, not {options.kill_every}")
    if options.nats_nodes is not None and options.nats_nodes not in (1, 3, 5):
        raise GamedayError(f"--nats-cluster takes 1, 3 or 5 nodes, not {options.nats_nodes}")
    if options.scale is not None:
        try:
            parse_scale(options.scale, partitions=load_settings().partitions)
        except ScaleError as exc:
            raise GamedayError(str(exc)) from None


def fresh_stack_env(options: GamedayOptions) -> dict[str, str]:
    """How `paystream up` is started for a --fresh run of the scenario."""
    env: dict[str, str] = {}
    nodes = options.nats_nodes or (3 if options.scenario == "nats-node" else 1)
    if options.scenario == "nats-node" and nodes < 3:
        raise GamedayError("nats-node needs a NATS cluster: --nats-cluster 3 (or 5)")
    env["PAYSTREAM_NATS_CLUSTER"] = str(nodes)
    if options.scale:
        env["PAYSTREAM_SCALE"] = options.scale
    if options.screening_deadline is not None:
        env["PAYSTREAM_SCREENING_DEADLINE_SECONDS"] = str(options.screening_deadline)
    return env


# -- the run ----------------------------------------------------------------------------------------


async def run_gameday(options: GamedayOptions, console: Console) -> int:
    """0 when the verdict passes, 1 when it does not; `GamedayError` for what cannot run."""
    check_options(options)
    if options.fresh:
        from paystream.tools.fresh import FreshStackFailed, fresh_stack

        env = fresh_stack_env(options)
        try:
            async with fresh_stack(console, prefix="paystream-gameday-", env=env) as home:
                return await _run_on(StackHandle(home), options, console,
                                     options.report_dir or Path("gameday"))
        except FreshStackFailed as exc:
            console.print(f"[red]{exc}[/red]")
            return 1
    stack = StackHandle(options.home or Path(".paystream"))
    stack.check_scenario(options.scenario)
    return await _run_on(stack, options, console, options.report_dir or stack.home / "gameday")


async def _run_on(stack: StackHandle, options: GamedayOptions, console: Console, report_dir: Path) -> int:
    stack.check_scenario(options.scenario)
    settings = load_settings()
    total = max(1, round(options.rate * options.duration))
    accounts = options.accounts or max(100, math.ceil(options.rate * 60 / (settings.fraud_velocity_limit / 3)))
    plan = BenchPlan(total, accounts, deposit_amount=settings.fraud_review_threshold - 1)
    rng = random.Random(options.seed)  # noqa: S311 - a reproducible workload, not a secret
    start, end = options.window
    console.rule(f"[bold]paystream gameday {options.scenario}")
    console.print(f"{SCENARIOS[options.scenario].about}\n{total:,} transfers at {options.rate:g}/s for "
                  f"{options.minutes:g} min over {accounts} wallets; fault from {start:.0f}s to {end:.0f}s "
                  f"· {os.cpu_count()} CPU cores")
    if options.scenario == "fraud-slow":
        await FraudFaults.for_home(stack.home).set(decision_delay_ms=NORMAL_DECISION_MS)
    engine_options = EngineOptions(rate=options.rate, concurrency=512, poll_after=10.0,
                                   stall_timeout=45.0, max_wait=options.duration + 300)
    async with PaystreamClient.for_stack(stack.info, max_connections=256) as client, \
            registered_receiver(client) as receiver:
        wallets = await create_wallets(client, accounts, concurrency=32, label="gameday")
        transfers = plan.transfers(wallets, rng)
        funding = await run_with_progress(
            LoadEngine(client, receiver, EngineOptions(concurrency=32)),
            plan.deposits(wallets, transfers), console, "setup: deposits",
        )
        if len(funding.settled) != len(funding.tracked):
            console.print("[red]setup failed: not every deposit settled; no game day[/red]")
            return 1
        timeline = Timeline()
        sampler = Sampler(stack, timeline)
        stop = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stop))
        fault = asyncio.create_task(SCENARIOS[options.scenario].fault(stack, options, timeline, console))
        engine = LoadEngine(client, receiver, engine_options)
        announced = Announcements()
        receiver.subscribe(announced)
        try:
            result = await run_with_progress(engine, transfers, console, "under load")
            await fault
            await _until_lag_drains(sampler, timeline, end)
            await announced.wait(result, timeout=WEBHOOK_GRACE_SECONDS)
        finally:
            receiver.unsubscribe(announced)
            fault.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await fault
            stop.set()
            await sampling
            if options.scenario == "fraud-slow":
                with contextlib.suppress(Exception):
                    await FraudFaults.for_home(stack.home).set(decision_delay_ms=0)
    origin = timeline.origin
    figures = run_figures(result, engine, sampler, options.window, origin)
    report = CheckReport([*(await ledger_checks(stack, result)), announced.check(result),
                          api_check(figures), lag_check(figures)])
    ok = report.ok
    failed = [c.name for c in report.failures()]
    verdict = (f"gameday {options.scenario}: PASS" if ok else
               f"gameday {options.scenario}: FAIL ({'; '.join(failed)})")
    recording = {
        "scenario": options.scenario,
        "params": {
            "rate": options.rate, "minutes": options.minutes, "cpu_cores": os.cpu_count(),
            "screening_deadline_s": _deadline(options), "accounts": accounts,
            "scale": {s: sum(1 for t in stack.targets if t.service == s) for s in SERVICES},
            "nats_nodes": len(stack.nats_urls), "seed": options.seed,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "fault": {"start": start, "end": end, "label": SCENARIOS[options.scenario].label},
        "events": timeline.events,
        "seconds": per_second(result, origin, timeline.now()),
        "series": sampler.recorded(),
        "figures": figures,
        "verdict": {"ok": ok, "line": verdict, "checks": [dataclasses.asdict(c) for c in report.checks]},
    }
    console.print(report.table())
    console.print(_figures_table(figures))
    data, html = _write_report(recording, options, report_dir)
    console.print(f"report: {html}\ndata:   {data}")
    console.print(f"[bold {'green' if ok else 'red'}]{verdict}[/]")
    return 0 if ok else 1


async def _until_lag_drains(sampler: Sampler, timeline: Timeline, fault_end: float) -> None:
    """Keep sampling until the lag was seen at zero after the fault, or for as long as it may take."""
    give_up = max(timeline.now(), fault_end + LAG_RECOVERY_SECONDS) + 10
    while timeline.now() < give_up:
        if any(at >= fault_end and value == 0 for at, value in sampler.lag_by_tick()):
            return
        await asyncio.sleep(1.0)


def _deadline(options: GamedayOptions) -> float | None:
    """The screening deadline of the stack (None: off): what --fresh gave it, else the setting
    as this environment has it (a running stack read its own when it started)."""
    if options.screening_deadline is not None:
        return options.screening_deadline or None
    return load_settings().screening_deadline_seconds or None


def _write_report(recording: dict[str, Any], options: GamedayOptions, report_dir: Path) -> tuple[Path, Path]:
    """(JSON, HTML) of the run, with which alert rules would have fired when."""
    from paystream.tools.alerts_eval import evaluate_alerts
    from paystream.tools.gameday_charts import run_end
    from paystream.tools.gameday_report import write_report

    rules = options.alert_rules or REPO_ALERT_RULES
    alerts = evaluate_alerts(rules, recording["series"], duration=run_end(recording))
    return write_report(recording, alerts, report_dir)


def _figures_table(figures: dict[str, Any]) -> Table:
    table = Table(title="Figures")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in figures.items():
        table.add_row(name, json.dumps(value) if isinstance(value, dict) else str(value))
    return table
