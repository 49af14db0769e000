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
import itertools
import json
import math
import os
import random
import signal
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from paystream.contracts.topology import SERVICES
from paystream.ledger.verify import verify_database
from paystream.platform.checks import Check, CheckReport
from paystream.platform.config import load_settings
from paystream.platform.home import read_stack
from paystream.stack.scale import ScaleError, parse_scale
from paystream.tools.bench import BenchPlan
from paystream.tools.client import FraudFaults, PaystreamClient, StackInfo
from paystream.tools.invariants import check_invariants
from paystream.tools.load import (
    TERMINAL,
    EngineOptions,
    LoadEngine,
    LoadResult,
    Tracked,
    create_wallets,
    percentile,
    registered_receiver,
    run_with_progress,
)
from paystream.tools.receiver import PaymentUpdate

SLOW_DECISION_MS = 4_000
NORMAL_DECISION_MS = 50
LAG_RECOVERY_SECONDS = 60.0  # lag must be back to zero this long after the fault's end
STUCK_AFTER_SECONDS = 3.0  # a payment in processing this long counts as stuck
WEBHOOK_GRACE_SECONDS = 30.0  # for the last webhooks (retries back off) once all is terminal
SCRAPE_INTERVAL = 1.0
# What the recording keeps of each /metrics: what docs/alerts.yml and the report read.
KEPT_METRICS = frozenset({
    "paystream_consumer_lag", "paystream_circuit_breaker_state", "paystream_ready",
    "paystream_screening_deadline_total", "paystream_bulkhead_rejected_total",
    "paystream_bulkhead_in_use", "paystream_outbox_backlog", "paystream_dead_letters_total",
    "paystream_webhook_attempts_total", "paystream_partitions_held",
})
REPO_ALERT_RULES = Path(__file__).resolve().parents[3] / "docs" / "alerts.yml"


class GamedayError(Exception):
    """Bad input, or a stack that cannot run the scenario: one line, exit 2, nothing started."""


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


# -- the stack under test -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One process of a service: where it alone answers, and its labels as Prometheus sees them."""

    service: str
    process: str
    url: str

    @property
    def labels(self) -> dict[str, str]:
        return {"job": f"paystream-{self.service}", "instance": self.process}


class StackHandle:
    """A running stack, as `paystream up` described it in its home."""

    def __init__(self, home: Path) -> None:
        self.home = home.resolve()
        try:
            self.info = StackInfo.load(self.home)
            self.raw: dict[str, Any] = read_stack(self.home)
        except FileNotFoundError as exc:
            raise GamedayError(str(exc)) from None
        if not _alive(int(self.raw.get("supervisor_pid") or 0)):
            raise GamedayError(f"the stack at {self.home} is not running (its supervisor is gone); "
                               "start it with `paystream up`")
        if not (self.home / "run").is_dir():
            raise GamedayError(f"the stack at {self.home} was started by an older paystream "
                               "(no run/ directory of pids); restart it")
        copies = self.raw.get("copies") or {
            name: [{"process": name, "url": url}] for name, url in self.info.operations_urls.items()
        }
        self.targets = [Target(service, c["process"], c["url"])
                        for service, listed in copies.items() for c in listed]
        self.nats_urls: list[str] = list(self.raw.get("nats_urls") or [self.info.nats_url])

    def check_scenario(self, scenario: str) -> None:
        if scenario == "nats-node" and len(self.nats_urls) < 3:
            raise GamedayError(
                f"nats-node needs a NATS cluster, and the stack at {self.home} runs one node: "
                "start it with `paystream up --nats-cluster 3`, or use --fresh"
            )

    def pid(self, process: str) -> int | None:
        try:
            return int((self.home / "run" / f"{process}.pid").read_text())
        except (OSError, ValueError):
            return None

    def signal(self, process: str, sig: int) -> int | None:
        pid = self.pid(process)
        if pid is None:
            return None
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return None
        return pid

    def hold(self, process: str) -> None:
        (self.home / "run" / f"{process}.hold").touch()

    def release(self, process: str) -> None:
        (self.home / "run" / f"{process}.hold").unlink(missing_ok=True)

    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=self.info.ca_file) if self.info.ca_file else True


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- what happened, second by second --------------------------------------------------------------


@dataclass
class Timeline:
    """Times are seconds since the run's origin (``time.perf_counter()`` at ``origin``)."""

    origin: float = field(default_factory=time.perf_counter)
    events: list[dict[str, Any]] = field(default_factory=list)

    def now(self) -> float:
        return time.perf_counter() - self.origin

    def note(self, console: Console, what: str) -> None:
        at = self.now()
        self.events.append({"t": round(at, 2), "what": what})
        console.print(f"[dim]{at:6.1f}s[/dim] [bold yellow]{what}[/bold yellow]")

    async def until(self, at: float) -> None:
        wait = at - self.now()
        if wait > 0:
            await asyncio.sleep(wait)


class Sampler:
    """Every second: each process's /readyz, then its /metrics (kept metrics only), as series."""

    def __init__(self, stack: StackHandle, timeline: Timeline) -> None:
        self._stack = stack
        self._timeline = timeline
        self.series: dict[tuple[str, tuple[tuple[str, str], ...]], list[list[float]]] = defaultdict(list)

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=0.8, verify=self._stack.verify()) as http:
            while not stop.is_set():
                began = time.perf_counter()
                at = round(self._timeline.now(), 2)
                await asyncio.gather(*(self._scrape(http, target, at) for target in self._stack.targets))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.05, SCRAPE_INTERVAL - (time.perf_counter() - began)))

    async def _scrape(self, http: httpx.AsyncClient, target: Target, at: float) -> None:
        base = target.labels
        try:
            await http.get(f"{target.url}/readyz")  # what a probe asks; paystream_ready follows it
            text = (await http.get(f"{target.url}/metrics")).text
        except httpx.HTTPError:
            self._add("up", base, at, 0.0)
            return
        self._add("up", base, at, 1.0)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in KEPT_METRICS:
                    self._add(sample.name, {**base, **sample.labels}, at, float(sample.value))

    def _add(self, name: str, labels: dict[str, str], at: float, value: float) -> None:
        self.series[(name, tuple(sorted(labels.items())))].append([at, value])

    def recorded(self) -> list[dict[str, Any]]:
        return [{"name": name, "labels": dict(labels), "samples": samples}
                for (name, labels), samples in sorted(self.series.items())]

    def _lag_per_tick(self) -> dict[float, dict[str, float]]:
        """t -> consumer -> events waiting: max over the copies (each reports the whole
        consumer's lag)."""
        per_tick: dict[float, dict[str, float]] = defaultdict(dict)
        for (name, labels), samples in self.series.items():
            if name != "paystream_consumer_lag":
                continue
            consumer = dict(labels).get("consumer", "")
            for at, value in samples:
                per_tick[at][consumer] = max(per_tick[at].get(consumer, 0.0), value)
        return per_tick

    def lag_by_tick(self) -> list[tuple[float, float]]:
        """(t, events waiting over all consumers), summed over consumers."""
        return sorted((at, sum(by.values())) for at, by in self._lag_per_tick().items())

    def lag_at_end(self) -> dict[str, float]:
        """The consumers with events still waiting at the last tick: who to look at when the
        lag never came back to zero."""
        per_tick = self._lag_per_tick()
        if not per_tick:
            return {}
        return {consumer: value for consumer, value in sorted(per_tick[max(per_tick)].items()) if value}

    def increase(self, name: str) -> float:
        """How much a counter grew over the run, summed over series (a restart's reset counts from 0)."""
        total = 0.0
        for (series_name, _), samples in self.series.items():
            if series_name != name:
                continue
            values = [v for _, v in samples]
            total += sum(b - a if b >= a else b for a, b in itertools.pairwise(values))
        return total


# -- the faults -----------------------------------------------------------------------------------

Fault = Callable[[StackHandle, GamedayOptions, Timeline, Console], Coroutine[Any, Any, None]]


async def _fraud_slow(stack: StackHandle, options: GamedayOptions, timeline: Timeline, console: Console) -> None:
    switch = FraudFaults.for_home(stack.home)
    start, end = options.window
    await timeline.until(start)
    await switch.set(decision_delay_ms=SLOW_DECISION_MS)
    timeline.note(console, f"fraud decisions now take {SLOW_DECISION_MS} ms")
    await timeline.until(end)
    await switch.set(decision_delay_ms=NORMAL_DECISION_MS)
    timeline.note(console, f"fraud decisions back to {NORMAL_DECISION_MS} ms")


async def _kill(stack: StackHandle, options: GamedayOptions, timeline: Timeline, console: Console) -> None:
    rng = random.Random(options.seed)  # noqa: S311 - a reproducible choice of victims
    start, end = options.window
    at = start
    while at < end:
        await timeline.until(at)
        service = rng.choice(SERVICES)
        victim = rng.choice([t for t in stack.targets if t.service == service])
        pid = stack.signal(victim.process, signal.SIGKILL)
        timeline.note(console, f"SIGKILL {victim.process}" + (f" (pid {pid})" if pid else " (not running)"))
        at += options.kill_every


async def _nats_node(stack: StackHandle, options: GamedayOptions, timeline: Timeline, console: Console) -> None:
    start, end = options.window
    await timeline.until(start)
    node = await _payments_leader(stack.nats_urls)
    stack.hold(node)
    try:
        pid = stack.signal(node, signal.SIGKILL)
        timeline.note(console, f"SIGKILL NATS node {node} (pid {pid}), leader of PAYMENTS; held down")
        await timeline.until(end)
    finally:
        stack.release(node)
    timeline.note(console, f"NATS node {node} released: the supervisor starts it again")


async def _payments_leader(urls: Sequence[str]) -> str:
    """The process name (`nats`, `nats-2` …) of the node leading the PAYMENTS stream."""
    import nats

    nc = await nats.connect(list(urls), connect_timeout=5, max_reconnect_attempts=3)
    try:
        info = await nc.jetstream().stream_info("PAYMENTS")
    finally:
        await nc.close()
    leader = info.cluster.leader if info.cluster else None
    index = int(str(leader).rsplit("-", 1)[-1]) if leader and "-" in str(leader) else 1
    return "nats" if index == 1 else f"nats-{index}"


async def _postgres_restart(stack: StackHandle, options: GamedayOptions, timeline: Timeline, console: Console) -> None:
    start, end = options.window
    down_for = max(3.0, min(10.0, (end - start) / 4))
    for at, sig, how in ((start, signal.SIGINT, "fast shutdown"),
                         ((start + end) / 2, signal.SIGKILL, "crash: SIGKILL of the postmaster")):
        await timeline.until(at)
        await _down_for(stack, "postgres", sig, how, down_for, timeline, console)


async def _redis_down(stack: StackHandle, options: GamedayOptions, timeline: Timeline, console: Console) -> None:
    start, end = options.window
    await timeline.until(start)
    await _down_for(stack, "redis", signal.SIGTERM, "stopped", end - start, timeline, console)


async def _down_for(stack: StackHandle, process: str, sig: int, how: str, seconds: float,
                    timeline: Timeline, console: Console) -> None:
    stack.hold(process)
    try:
        pid = stack.signal(process, sig)
        timeline.note(console, f"{process}: {how} (pid {pid}); held down for {seconds:.0f}s")
        if pid is not None:
            for _ in range(100):
                if not _alive(pid):
                    break
                await asyncio.sleep(0.1)
            timeline.note(console, f"{process} is down")
        await asyncio.sleep(seconds)
    finally:
        stack.release(process)
    timeline.note(console, f"{process} released: the supervisor starts it again")


@dataclass(frozen=True, slots=True)
class Scenario:
    about: str  # what the run does, for its header
    label: str  # the fault window's name in the report
    fault: Fault


SCENARIOS: dict[str, Scenario] = {
    "fraud-slow": Scenario(
        "fraud's decisions take 4 s for the middle third of the run, 50 ms otherwise",
        f"fraud decisions take {SLOW_DECISION_MS / 1000:.0f} s", _fraud_slow),
    "kill": Scenario(
        "a random copy of a random service is SIGKILLed every few seconds in the middle third",
        "random copies SIGKILLed", _kill),
    "nats-node": Scenario(
        "the NATS node leading the PAYMENTS stream is down for the middle third",
        "one NATS node down", _nats_node),
    "postgres-restart": Scenario(
        "PostgreSQL: a fast shutdown a third in, a crash half-way, each down a few seconds",
        "PostgreSQL fast shutdown, then crash", _postgres_restart),
    "redis-down": Scenario(
        "Redis is stopped for the middle third of the run", "Redis down", _redis_down),
}


# -- judging ----------------------------------------------------------------------------------------


async def _ledger_checks(stack: StackHandle, result: LoadResult) -> list[Check]:
    """Each accepted payment ended once or waits in review with its funds held; the invariants;
    ledger verify."""
    ids = [t.payment_id for t in result.tracked if t.payment_id]
    conn = await asyncpg.connect(stack.info.postgres_url, timeout=10)
    try:
        statuses = Counter({r["status"]: r["n"] for r in await conn.fetch(
            "SELECT status, count(*) AS n FROM payments.payments WHERE id = ANY($1::text[]) GROUP BY status",
            ids)})
        unheld = await conn.fetchval(
            """
            SELECT count(*) FROM payments.payments p
            WHERE p.id = ANY($1::text[]) AND p.status = 'requires_review' AND p.kind = 'transfer'
              AND NOT EXISTS (SELECT 1 FROM ledger.transfers t JOIN ledger.holds h ON h.transfer_id = t.id
                              WHERE t.tenant_id = p.tenant_id AND t.external_ref = p.id AND h.status = 'pending')
            """, ids)
    finally:
        await conn.close()
    summary = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    missing = len(ids) - statuses.total()
    stuck = statuses["processing"]
    checks = [
        Check("every accepted payment ended once, or waits in review", stuck == 0 and missing == 0,
              f"{len(ids)} accepted: {summary}" + (f"; {missing} not found" if missing else "")),
        Check("funds held for every payment in review", unheld == 0,
              f"{statuses['requires_review']} in review" + (f", {unheld} with no hold" if unheld else "")),
    ]
    invariants = await check_invariants(stack.info.postgres_url, settled=False)
    checks.extend(invariants.checks)
    verified = await verify_database(stack.info.postgres_url)
    checks.append(Check("ledger verify", verified.ok,
                        "; ".join(f"{c.name}: {c.detail}" for c in verified.checks if not c.ok) or "green"))
    return checks


def _seconds(result: LoadResult, origin: float, until: float) -> list[dict[str, Any]]:
    """Offered / accepted / completed per whole second, with that second's API and e2e p99."""
    count = math.ceil(until) + 1
    offered, accepted, completed = [0] * count, [0] * count, [0] * count
    api: list[list[float]] = [[] for _ in range(count)]
    e2e: list[list[float]] = [[] for _ in range(count)]

    def second(at: float) -> int | None:
        index = int(at - origin)
        return index if 0 <= index < count else None

    for t in result.tracked:
        if (i := second(t.sent_at)) is not None:
            offered[i] += 1
        if t.answered_at is not None and (i := second(t.answered_at)) is not None:
            accepted[i] += 1
            api[i].append(t.answered_at - t.sent_at)
        if t.terminal_at is not None and (i := second(t.terminal_at)) is not None:
            completed[i] += 1
            e2e[i].append(t.terminal_at - t.sent_at)
    return [{"t": i, "offered": offered[i], "accepted": accepted[i], "completed": completed[i],
             "api_p99_ms": _ms(percentile(api[i], 99)), "e2e_p99_ms": _ms(percentile(e2e[i], 99))}
            for i in range(count)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def stuck_in_processing(tracked: Sequence[Tracked], origin: float, start: float, end: float) -> int:
    """The most payments, at any whole second of [start, end], that had been in processing for
    more than STUCK_AFTER_SECONDS (neither terminal nor in review)."""
    most = 0
    for second in range(int(start), int(end) + 1):
        now = origin + second
        count = 0
        for t in tracked:
            if t.answered_at is None or t.sent_at > now - STUCK_AFTER_SECONDS:
                continue
            left = min((x for x in (t.terminal_at, t.review_at) if x is not None), default=None)
            if left is None or left > now:
                count += 1
        most = max(most, count)
    return most


def _figures(result: LoadResult, engine: LoadEngine, sampler: Sampler, options: GamedayOptions,
             origin: float) -> dict[str, Any]:
    start, end = options.window
    lag = sampler.lag_by_tick()
    back = next((at for at, value in lag if at >= end and value == 0), None)

    def e2e(lo: float, hi: float) -> float | None:
        return percentile([t.terminal_at - t.sent_at for t in result.tracked if t.terminal_at is not None
                           and lo <= t.sent_at - origin < hi], 99)

    fives = Counter({code: n for code, n in engine.answers.items() if code >= 500})
    return {
        "offered": len(result.tracked),
        "accepted": len(result.accepted),
        "refused": len(result.tracked) - len(result.accepted),
        "refusals": dict(result.rejections()),
        "http_5xx": {str(code): n for code, n in sorted(fives.items())},
        "peak_lag": max((value for _, value in lag), default=0.0),
        "lag_zero_after_fault_s": None if back is None else round(back - end, 1),
        "lag_at_end": sampler.lag_at_end(),
        "sent_to_review_by_deadline": sampler.increase("paystream_screening_deadline_total"),
        "stuck_in_processing_max": stuck_in_processing(result.tracked, origin, start, end),
        "e2e_p99_before_ms": _ms(e2e(0, start)),
        "e2e_p99_during_ms": _ms(e2e(start, end)),
        "e2e_p99_after_ms": _ms(e2e(end, math.inf)),
        "api_p99_ms": _ms(percentile([t.answered_at - t.sent_at for t in result.tracked
                                      if t.answered_at is not None], 99)),
        "statuses": {f"{s}/{c}" if c else s: n for (s, c), n in sorted(result.outcomes().items())},
        "learned_by": dict(result.learned_by()),
    }


class Announcements:
    """Which payments' outcomes reached the receiver as a signed webhook (late ones too: the
    engine may have learned an outcome by polling first)."""

    def __init__(self) -> None:
        self.ended: set[str] = set()

        self._news = asyncio.Event()

    def __call__(self, update: PaymentUpdate) -> None:
        if update.status in TERMINAL:
            self.ended.add(update.payment_id)
            self._news.set()

    def missing(self, result: LoadResult) -> list[str]:
        return [t.payment_id for t in result.settled if t.payment_id and t.payment_id not in self.ended]

    async def wait(self, result: LoadResult, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.missing(result) and time.monotonic() < deadline:
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), timeout=1.0)

    def check(self, result: LoadResult) -> Check:
        missing = self.missing(result)
        return Check("every outcome announced by webhook", not missing,
                     f"{len(result.settled) - len(missing)} of {len(result.settled)} terminal payments")


def _api_check(figures: dict[str, Any]) -> Check:
    bad = {code: n for code, n in figures["http_5xx"].items() if code != "503"}
    detail = ", ".join(f"{n}x {code}" for code, n in figures["http_5xx"].items()) or "no 5xx"
    return Check("the API answered no 5xx but 503", not bad, detail)


def _lag_check(figures: dict[str, Any]) -> Check:
    back = figures["lag_zero_after_fault_s"]
    ok = back is not None and back <= LAG_RECOVERY_SECONDS
    left = ", ".join(f"{consumer} {value:.0f}" for consumer, value in figures["lag_at_end"].items())
    return Check(f"lag back to 0 within {LAG_RECOVERY_SECONDS:.0f} s of the fault's end", ok,
                 f"after {back} s" if back is not None
                 else f"lag never returned to 0 (at the end: {left or 'none reported'})")


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
    figures = _figures(result, engine, sampler, options, origin)
    report = CheckReport([*(await _ledger_checks(stack, result)), announced.check(result),
                          _api_check(figures), _lag_check(figures)])
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
        "seconds": _seconds(result, origin, timeline.now()),
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
    from paystream.tools.gameday_report import run_end, write_report

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
