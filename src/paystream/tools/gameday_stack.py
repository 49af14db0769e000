"""The stack a game day runs against, and what it records of it second by second.

`StackHandle` is a running stack as `paystream up` described it in its home (its processes,
their pids, hold files for the supervisor); `Sampler` asks each process ``/readyz`` and reads
its ``/metrics`` every second, as a Kubernetes probe and Prometheus would; `Timeline` keeps
the run's clock and what happened when.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from paystream.platform.home import read_stack
from paystream.tools.client import StackInfo

SCRAPE_INTERVAL = 1.0
# What the recording keeps of each /metrics: what docs/alerts.yml and the report read.
KEPT_METRICS = frozenset({
    "paystream_consumer_lag", "paystream_circuit_breaker_state", "paystream_ready",
    "paystream_screening_deadline_total", "paystream_bulkhead_rejected_total",
    "paystream_bulkhead_in_use", "paystream_outbox_backlog", "paystream_dead_letters_total",
    "paystream_webhook_attempts_total", "paystream_partitions_held",
})


class GamedayError(Exception):
    """Bad input, or a stack that cannot run the scenario: one line, exit 2, nothing started."""


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
        if not alive(int(self.raw.get("supervisor_pid") or 0)):
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


def alive(pid: int) -> bool:
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
