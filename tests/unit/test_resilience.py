"""`Guard`: timeout, bulkhead and circuit breaker, on an injected clock, and the metrics
each guard exports.

The breaker reads time from the injected `FakeClock`; a "slow" call advances that clock
and returns at once. Timeouts and bulkhead waits are asyncio's own (loop time), so the
tests for them use budgets of a few milliseconds on calls that never finish by themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from paystream.platform.errors import TransientError
from paystream.platform.observability import Metrics
from paystream.platform.resilience import (
    BreakerOpen,
    BulkheadFull,
    CallTimeout,
    Guard,
    GuardPolicy,
    State,
)

OPEN_SECONDS = 5.0
SHORT = 0.01  # seconds: a timeout or bulkhead wait the test expects to run out


class FakeClock:
    """Monotonic time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class DependencyError(Exception):
    """What the guarded dependency raises in these tests."""


async def answer() -> str:
    return "ok"


async def fail() -> str:
    raise DependencyError("the dependency said no")


def taking(clock: FakeClock, seconds: float) -> Callable[[], Awaitable[str]]:
    """A call that succeeds after ``seconds`` of the guard's clock."""

    async def call() -> str:
        clock.advance(seconds)
        return "ok"

    return call


class Held:
    """Calls that take a bulkhead slot and keep it until `release`."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.tasks: list[asyncio.Task[str]] = []
        self._released = asyncio.Event()

    async def hold(self, count: int) -> None:
        """Start ``count`` calls and return once all of them are inside the dependency."""
        for _ in range(count):
            entered = asyncio.Event()
            self.tasks.append(asyncio.create_task(self.guard.call(self._waiting(entered), timeout=10.0)))
            await asyncio.wait_for(entered.wait(), timeout=5.0)

    def _waiting(self, entered: asyncio.Event) -> Callable[[], Awaitable[str]]:
        async def call() -> str:
            entered.set()
            await self._released.wait()
            return "ok"

        return call

    async def release(self) -> list[str]:
        self._released.set()
        return await asyncio.gather(*self.tasks)


def breaker_policy(**overrides: Any) -> GuardPolicy:
    """A breaker that judges the last 4 calls, opens at half of them failed, probes twice."""
    settings: dict[str, Any] = {
        "timeout": 1.0, "window": 4, "min_calls": 4, "failure_rate": 0.5,
        "slow_call_rate": 0.5, "open_seconds": OPEN_SECONDS, "half_open_probes": 2,
    }
    settings.update(overrides)
    return GuardPolicy(**settings)


async def failing_calls(guard: Guard, count: int) -> None:
    for _ in range(count):
        with pytest.raises(DependencyError):
            await guard.call(fail)


async def opened(clock: FakeClock, metrics: Metrics | None = None) -> Guard:
    guard = Guard("dep", breaker_policy(), clock=clock, metrics=metrics)
    await failing_calls(guard, 4)
    assert guard.state is State.OPEN
    return guard


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


# Timeout


async def test_a_call_within_its_timeout_returns_its_result() -> None:
    guard = Guard("dep", GuardPolicy(timeout=5.0), clock=FakeClock())
    assert await guard.call(answer) == "ok"


async def test_a_call_that_outlives_its_timeout_raises_call_timeout() -> None:
    guard = Guard("dep", GuardPolicy(timeout=SHORT), clock=FakeClock())
    never = asyncio.Event()
    with pytest.raises(CallTimeout) as raised:
        await guard.call(never.wait)
    assert isinstance(raised.value, TransientError)


async def test_a_per_call_timeout_overrides_the_policy() -> None:
    guard = Guard("dep", GuardPolicy(timeout=10.0), clock=FakeClock())
    never = asyncio.Event()
    with pytest.raises(CallTimeout):
        await guard.call(never.wait, timeout=SHORT)


# Bulkhead


async def test_the_bulkhead_refuses_a_call_when_every_slot_stays_taken_past_max_wait() -> None:
    guard = Guard("dep", GuardPolicy(max_concurrent=2, max_wait=SHORT), clock=FakeClock())
    held = Held(guard)
    await held.hold(2)
    assert guard.saturated
    called = False

    async def extra() -> str:
        nonlocal called
        called = True
        return "ok"

    with pytest.raises(BulkheadFull):
        await guard.call(extra)
    assert not called
    assert await held.release() == ["ok", "ok"]


async def test_the_bulkhead_admits_a_waiting_call_when_a_slot_frees_within_max_wait() -> None:
    guard = Guard("dep", GuardPolicy(max_concurrent=1, max_wait=5.0), clock=FakeClock())
    held = Held(guard)
    await held.hold(1)
    waiting = asyncio.create_task(guard.call(answer))
    await held.release()
    assert await waiting == "ok"


async def test_a_refused_call_does_not_count_against_the_breaker() -> None:
    guard = Guard("dep", breaker_policy(max_concurrent=1, max_wait=SHORT), clock=FakeClock())
    held = Held(guard)
    await held.hold(1)
    for _ in range(4):
        with pytest.raises(BulkheadFull):
            await guard.call(answer)
    await held.release()
    assert guard.state is State.CLOSED


# Breaker: CLOSED -> OPEN


async def test_the_breaker_opens_when_the_failure_rate_is_reached() -> None:
    guard = Guard("dep", breaker_policy(), clock=FakeClock())
    await guard.call(answer)
    await guard.call(answer)
    await failing_calls(guard, 1)
    assert guard.state is State.CLOSED  # 1 failed of 3: fewer than min_calls
    await failing_calls(guard, 1)
    assert guard.state is State.OPEN  # 2 failed of 4 = failure_rate


async def test_the_breaker_stays_closed_below_the_failure_rate() -> None:
    guard = Guard("dep", breaker_policy(), clock=FakeClock())
    for _ in range(3):
        await guard.call(answer)
    await failing_calls(guard, 1)
    assert guard.state is State.CLOSED  # 1 failed of 4


async def test_an_open_breaker_refuses_calls_without_making_them() -> None:
    guard = await opened(FakeClock())
    called = False

    async def call() -> str:
        nonlocal called
        called = True
        return "ok"

    with pytest.raises(BreakerOpen) as raised:
        await guard.call(call)
    assert not called
    assert isinstance(raised.value, TransientError)


async def test_timeouts_count_as_failures() -> None:
    guard = Guard("dep", breaker_policy(timeout=SHORT, slow_call_rate=1.1), clock=FakeClock())
    never = asyncio.Event()
    await guard.call(answer)
    await guard.call(answer)
    for _ in range(2):
        with pytest.raises(CallTimeout):
            await guard.call(never.wait)
    assert guard.state is State.OPEN


# Breaker: OPEN -> HALF_OPEN -> CLOSED or OPEN


async def test_the_breaker_half_opens_once_open_seconds_pass() -> None:
    clock = FakeClock()
    guard = await opened(clock)
    clock.advance(OPEN_SECONDS - 0.001)
    assert guard.state is State.OPEN
    clock.advance(0.001)
    assert guard.state is State.HALF_OPEN


async def test_the_breaker_closes_after_enough_successful_probes() -> None:
    clock = FakeClock()
    guard = await opened(clock)
    clock.advance(OPEN_SECONDS)
    assert await guard.call(answer) == "ok"
    assert guard.state is State.HALF_OPEN  # 1 of 2 probes
    assert await guard.call(answer) == "ok"
    assert guard.state is State.CLOSED


async def test_a_failed_probe_opens_the_breaker_again_for_open_seconds() -> None:
    clock = FakeClock()
    guard = await opened(clock)
    clock.advance(OPEN_SECONDS)
    await guard.call(answer)
    await failing_calls(guard, 1)
    assert guard.state is State.OPEN
    clock.advance(OPEN_SECONDS - 0.001)
    assert guard.state is State.OPEN  # the open time starts again at the failed probe
    clock.advance(0.001)
    assert guard.state is State.HALF_OPEN


async def test_a_half_open_breaker_lets_only_half_open_probes_through_at_once() -> None:
    clock = FakeClock()
    guard = await opened(clock)
    clock.advance(OPEN_SECONDS)
    held = Held(guard)
    await held.hold(2)
    with pytest.raises(BreakerOpen):
        await guard.call(answer)
    await held.release()
    assert guard.state is State.CLOSED


async def test_a_closed_breaker_forgets_the_calls_before_it_opened() -> None:
    clock = FakeClock()
    guard = await opened(clock)
    clock.advance(OPEN_SECONDS)
    await guard.call(answer)
    await guard.call(answer)
    await failing_calls(guard, 3)  # 3 of 3 failed: fewer than min_calls since closing
    assert guard.state is State.CLOSED


# Breaker: slow calls


async def test_a_call_that_takes_its_whole_timeout_counts_as_slow() -> None:
    clock = FakeClock()
    guard = Guard("dep", breaker_policy(timeout=1.0, failure_rate=1.1), clock=clock)
    await guard.call(answer)
    await guard.call(answer)
    await guard.call(taking(clock, 1.0))
    assert guard.state is State.CLOSED  # 3 calls: fewer than min_calls
    await guard.call(taking(clock, 1.0))
    assert guard.state is State.OPEN  # 2 slow of 4 = slow_call_rate


async def test_a_call_just_inside_its_timeout_is_not_slow_by_default() -> None:
    clock = FakeClock()
    guard = Guard("dep", breaker_policy(timeout=1.0, failure_rate=1.1), clock=clock)
    for _ in range(4):
        await guard.call(taking(clock, 0.999))
    assert guard.state is State.CLOSED


async def test_the_slow_threshold_follows_a_per_call_timeout() -> None:
    clock = FakeClock()
    guard = Guard("dep", breaker_policy(timeout=10.0, failure_rate=1.1), clock=clock)
    for _ in range(4):
        await guard.call(taking(clock, 0.2), timeout=0.2)
    assert guard.state is State.OPEN


async def test_slow_call_seconds_overrides_the_timeout_as_the_slow_threshold() -> None:
    clock = FakeClock()
    guard = Guard("dep", breaker_policy(timeout=1.0, failure_rate=1.1, slow_call_seconds=0.25), clock=clock)
    for _ in range(4):
        await guard.call(taking(clock, 0.3))
    assert guard.state is State.OPEN


async def test_a_slow_probe_opens_the_breaker_again() -> None:
    clock = FakeClock()
    guard = await opened(clock)
    clock.advance(OPEN_SECONDS)
    await guard.call(taking(clock, 1.0))  # the policy's timeout
    assert guard.state is State.OPEN


# Metrics and busy share


async def test_the_breaker_state_gauge_follows_the_breaker() -> None:
    clock = FakeClock()
    metrics = Metrics("test")
    labels = {"name": "dep"}
    guard = Guard("dep", breaker_policy(), clock=clock, metrics=metrics)
    assert sample(metrics, "paystream_circuit_breaker_state", labels) == 0
    await failing_calls(guard, 4)
    assert sample(metrics, "paystream_circuit_breaker_state", labels) == 2
    clock.advance(OPEN_SECONDS)
    assert guard.state is State.HALF_OPEN
    assert sample(metrics, "paystream_circuit_breaker_state", labels) == 1
    await guard.call(answer)
    await guard.call(answer)
    assert sample(metrics, "paystream_circuit_breaker_state", labels) == 0


async def test_the_bulkhead_gauges_show_slots_in_use_of_capacity() -> None:
    metrics = Metrics("test")
    labels = {"name": "dep"}
    guard = Guard("dep", GuardPolicy(max_concurrent=4), clock=FakeClock(), metrics=metrics)
    assert sample(metrics, "paystream_bulkhead_capacity", labels) == 4
    assert sample(metrics, "paystream_bulkhead_in_use", labels) == 0
    held = Held(guard)
    await held.hold(3)
    assert sample(metrics, "paystream_bulkhead_in_use", labels) == 3
    await held.release()
    assert sample(metrics, "paystream_bulkhead_in_use", labels) == 0


async def test_each_bulkhead_refusal_is_counted() -> None:
    metrics = Metrics("test")
    labels = {"name": "dep"}
    guard = Guard("dep", GuardPolicy(max_concurrent=1, max_wait=SHORT), clock=FakeClock(), metrics=metrics)
    assert sample(metrics, "paystream_bulkhead_rejected_total", labels) is None  # no child yet
    held = Held(guard)
    await held.hold(1)
    for _ in range(2):
        with pytest.raises(BulkheadFull):
            await guard.call(answer)
    await held.release()
    assert sample(metrics, "paystream_bulkhead_rejected_total", labels) == 2


async def test_guards_export_under_their_own_names() -> None:
    metrics = Metrics("test")
    ledger = Guard("ledger", GuardPolicy(max_concurrent=32), clock=FakeClock(), metrics=metrics)
    Guard("redis", GuardPolicy(max_concurrent=8), clock=FakeClock(), metrics=metrics)
    held = Held(ledger)
    await held.hold(1)
    assert sample(metrics, "paystream_bulkhead_in_use", {"name": "ledger"}) == 1
    assert sample(metrics, "paystream_bulkhead_in_use", {"name": "redis"}) == 0
    assert sample(metrics, "paystream_bulkhead_capacity", {"name": "redis"}) == 8
    await held.release()


async def test_busy_share_is_the_share_of_slots_in_use() -> None:
    guard = Guard("dep", GuardPolicy(max_concurrent=4), clock=FakeClock())
    assert guard.busy_share == 0.0
    held = Held(guard)
    await held.hold(2)
    assert guard.busy_share == 0.5
    await held.hold(2)
    assert guard.busy_share == 1.0
    assert guard.saturated
    await held.release()
    assert guard.busy_share == 0.0
