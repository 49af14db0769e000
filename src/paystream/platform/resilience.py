"""Resilience policy for calls that leave the process: timeout, bulkhead, circuit breaker.

Seed 001 is the scenario: a dependency that slows from 50 ms to 4 s must not exhaust
our own pools. So every such call goes through a `Guard`: a bulkhead bounds how many
calls wait on the dependency at once (refusing the rest quickly), a timeout bounds
each call, and a circuit breaker opens when too many recent calls failed or were
slow, sheds load while open, and lets a few probes through when half-open.

By default a call counts as slow exactly when it took its whole timeout: a call that
would have timed out is the one a caller would retry, and retries are what turn a
slow dependency into an overloaded one. `GuardPolicy.slow_call_seconds` overrides this
for a breaker that should open on slowness before calls time out.

With `Metrics`, each guard exports its breaker state and its bulkhead's slots in use,
capacity and refusals, labelled with the guard's name; `Guard.busy_share` gives the
same in-use share to readiness checks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from paystream.platform.errors import TransientError
from paystream.platform.observability import Metrics, get_logger

log = get_logger(__name__)
T = TypeVar("T")


class BreakerOpen(TransientError):
    """The circuit is open: the dependency is presumed down, the call was not made."""


class BulkheadFull(TransientError):
    """Too many calls already wait on this dependency."""


class CallTimeout(TransientError):
    """The call did not finish within its budget."""


class State(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardPolicy:
    """How a `Guard` protects one dependency. Defaults suit an in-datacentre call."""

    timeout: float = 1.0  # seconds a single call may take
    max_concurrent: int = 64  # bulkhead size
    max_wait: float = 0.05  # seconds to wait for a bulkhead slot before refusing
    window: int = 50  # calls remembered by the breaker
    min_calls: int = 10  # calls in the window before the breaker may open
    failure_rate: float = 0.5  # share of failed calls that opens the breaker
    slow_call_seconds: float | None = None  # a call at least this slow counts as slow; None: its timeout
    slow_call_rate: float = 0.8  # share of slow calls that opens the breaker
    open_seconds: float = 5.0  # how long the breaker stays open before probing
    half_open_probes: int = 3  # successful probes needed to close again


class Guard:
    """Timeout + bulkhead + circuit breaker around calls to one named dependency."""

    def __init__(
        self,
        name: str,
        policy: GuardPolicy | None = None,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.policy = policy or GuardPolicy()
        self._metrics = metrics
        self._clock = clock
        self._slots = asyncio.Semaphore(self.policy.max_concurrent)
        self._in_use = 0
        self._outcomes: deque[tuple[bool, bool]] = deque(maxlen=self.policy.window)
        self._state = State.CLOSED
        self._opened_at = 0.0
        self._probes_ok = 0
        self._probes_in_flight = 0
        if metrics:
            metrics.bulkhead_capacity.labels(name).set(self.policy.max_concurrent)
        if metrics is not None:
            metrics.guards.append(self)
        self._report()

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self._clock() - self._opened_at >= self.policy.open_seconds:
            self._transition(State.HALF_OPEN)
        return self._state

    @property
    def saturated(self) -> bool:
        """True when every bulkhead slot is taken."""
        return self._in_use >= self.policy.max_concurrent

    @property
    def busy_share(self) -> float:
        """The share of bulkhead slots taken, 0.0 (idle) to 1.0 (saturated)."""
        return self._in_use / self.policy.max_concurrent

    def _report(self) -> None:
        if self._metrics:
            self._metrics.breaker_state.labels(self.name).set(int(self._state))
            self._metrics.bulkhead_in_use.labels(self.name).set(self._in_use)

    def _transition(self, state: State) -> None:
        if state is self._state:
            return
        log.warning("circuit_breaker", dependency=self.name, state=state.name.lower())
        self._state = state
        if state is State.OPEN:
            self._opened_at = self._clock()
        if state is not State.CLOSED:
            self._probes_ok = 0
            self._probes_in_flight = 0
        if state is State.CLOSED:
            self._outcomes.clear()
        self._report()

    def _record(self, *, failed: bool, slow: bool) -> None:
        if self._state is State.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
            if failed or slow:
                self._transition(State.OPEN)
            else:
                self._probes_ok += 1
                if self._probes_ok >= self.policy.half_open_probes:
                    self._transition(State.CLOSED)
            return
        self._outcomes.append((failed, slow))
        calls = len(self._outcomes)
        if calls < self.policy.min_calls:
            return
        failures = sum(1 for f, _ in self._outcomes if f)
        slows = sum(1 for _, s in self._outcomes if s)
        if failures / calls >= self.policy.failure_rate or slows / calls >= self.policy.slow_call_rate:
            self._transition(State.OPEN)

    def _admit(self) -> None:
        state = self.state
        if state is State.OPEN:
            raise BreakerOpen(f"{self.name}: circuit open")
        if state is State.HALF_OPEN:
            if self._probes_in_flight >= self.policy.half_open_probes:
                raise BreakerOpen(f"{self.name}: circuit half-open, probes in flight")
            self._probes_in_flight += 1

    async def call(self, fn: Callable[[], Awaitable[T]], *, timeout: float | None = None) -> T:
        """Run ``fn()`` under the guard. Raises `BreakerOpen`, `BulkheadFull` or `CallTimeout`
        (all transient) or whatever ``fn`` raises."""
        self._admit()
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.policy.max_wait)
        except TimeoutError:
            if self._state is State.HALF_OPEN:
                self._probes_in_flight = max(0, self._probes_in_flight - 1)
            if self._metrics:
                self._metrics.bulkhead_rejected.labels(self.name).inc()
            raise BulkheadFull(f"{self.name}: bulkhead full") from None
        self._in_use += 1
        self._report()
        started = self._clock()
        budget = timeout if timeout is not None else self.policy.timeout
        slow_after = self.policy.slow_call_seconds if self.policy.slow_call_seconds is not None else budget
        try:
            result = await asyncio.wait_for(fn(), timeout=budget)
        except TimeoutError:
            self._record(failed=True, slow=True)
            raise CallTimeout(f"{self.name}: no answer within {budget:.3f}s") from None
        except Exception:
            self._record(failed=True, slow=False)
            raise
        finally:
            self._in_use -= 1
            self._slots.release()
            self._report()
        self._record(failed=False, slow=self._clock() - started >= slow_after)
        return result
