"""The faults of the game day's scenarios, each injected in the run's middle third (its window).

A server is kept down through the supervisor's hold files (``<home>/run/<name>.hold``, see
stack/process.py); everything else is signals to the pids in ``<home>/run``.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console

from paystream.contracts.topology import SERVICES
from paystream.tools.client import FraudFaults
from paystream.tools.gameday_stack import StackHandle, Timeline, alive

if TYPE_CHECKING:
    from paystream.tools.gameday import GamedayOptions

SLOW_DECISION_MS = 4_000
NORMAL_DECISION_MS = 50

# -- the faults -----------------------------------------------------------------------------------

Fault = Callable[[StackHandle, "GamedayOptions", Timeline, Console], Coroutine[Any, Any, None]]


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
                if not alive(pid):
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
