"""Helpers for the integration tests: polling with a deadline (also for a lock wait), fetching a
known number of messages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from paystream.platform.bus import Delivery, Subscription

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Poll ``check()`` until it returns something truthy (returned), or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)


async def waiting_on_a_lock(pool: asyncpg.Pool, query_like: str = "%", *, timeout: float = 5.0) -> None:
    """Return once another backend whose query is like ``query_like`` waits for a lock."""
    await eventually(lambda: pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND pid <> pg_backend_pid() AND query LIKE $1", query_like,
    ), timeout=timeout)


async def fetch_n(subscription: Subscription, count: int, *, timeout: float = 10.0) -> list[Delivery]:
    """Fetch until ``count`` deliveries came (a fetch may return fewer than are available)."""
    deadline = time.monotonic() + timeout
    got: list[Delivery] = []
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"only {len(got)} of {count} messages within {timeout}s")
        got += await subscription.fetch(count - len(got), timeout=min(remaining, 2.0))
    return got
