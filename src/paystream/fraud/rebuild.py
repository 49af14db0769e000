"""Rebuilding the fraud features' Redis state from PostgreSQL when Redis has lost it.

Redis is not the source of truth: every screened payment's facts are kept in
``payment_facts``, written in the transaction of its decision. The Redis state carries a
marker key, set once it is complete; a Redis that restarted empty (or was flushed) has no
marker. Each round, `FeatureRebuilder`:

1. does nothing while the marker is there;
2. otherwise replays the facts of the last 90 days (the longest window a feature looks
   back over) in time order, a page at a time, through the same script the screening path
   runs (`OnlineFeatures.record`), then sets the marker.

A payment already in Redis is not counted again (its stored result answers), so a replay
beside live screening, or by two copies at once, adds each payment once. Payments screened
while a replay runs may be added before older ones of the same account: their
exponentially weighted statistics are then a little off until the account's next payments
wash it out.

The keys carry the state's layout version (`features.PREFIX`): code whose features keep
other state finds no marker under its own prefix and rebuilds from the stored facts, and
the old layout's keys expire on their own.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import redis.asyncio as redis
from redis.exceptions import RedisError

from paystream.fraud.features import NOVELTY_MS, PREFIX, OnlineFeatures
from paystream.fraud.store import FraudStore
from paystream.platform.errors import TransientError
from paystream.platform.observability import get_logger
from paystream.platform.runtime import repeat

log = get_logger(__name__)


class FeatureRebuilder:
    """Replays ``payment_facts`` into Redis when the feature state's marker is missing (module docstring)."""

    def __init__(self, pool: asyncpg.Pool, store: FraudStore, features: OnlineFeatures, client: redis.Redis, *,
                 prefix: str = PREFIX, interval: float = 5.0, page: int = 1000) -> None:
        self._pool = pool
        self._store = store
        self._features = features
        self._client = client
        self._marker = f"{prefix}:complete"
        self._interval = interval
        self._page = page

    async def rebuild_if_lost(self) -> int:
        """Rebuild when the marker is missing; returns how many payments were replayed (0: nothing to do)."""
        try:
            if await self._client.exists(self._marker):
                return 0
        except (RedisError, OSError, TimeoutError) as exc:
            raise TransientError(f"feature store unavailable: {exc!r}") from exc
        began = time.monotonic()
        now_ms = int(time.time() * 1000)
        cursor: tuple[int, str] = (0, "")
        replayed = 0
        while True:
            async with self._pool.acquire() as conn:
                page = await self._store.facts_since(conn, now_ms - NOVELTY_MS, cursor, self._page)
            if not page:
                break
            await self._features.record(page)
            replayed += len(page)
            cursor = (page[-1].at_ms, page[-1].payment_id)
        try:
            await self._client.set(self._marker, now_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            raise TransientError(f"feature store unavailable: {exc!r}") from exc
        log.info("fraud_features_rebuilt", payments=replayed, seconds=round(time.monotonic() - began, 3))
        return replayed

    async def run(self, stopping: asyncio.Event) -> None:
        async def round_() -> int:
            await self.rebuild_if_lost()
            return 0

        await repeat(stopping, round_, interval=self._interval, failed="fraud_features_rebuild_failed")
