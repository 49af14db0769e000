"""Per-account payment velocity in Redis: a sliding-window log keyed by account.

Each payment is added once (its id is the member), so a redelivered event does not
count twice. Its count is of the account's payments in the window that ends when it was
first recorded: screening it again later (a re-screen after the screening deadline) does
not count the payments that came after it. A batch is one round trip (a pipeline of one
script call per payment).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as redis
from redis.exceptions import RedisError

from paystream.platform.errors import TransientError

_SCRIPT = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
redis.call('ZADD', key, 'NX', now, ARGV[3])
redis.call('PEXPIRE', key, window)
local at = tonumber(redis.call('ZSCORE', key, ARGV[3]))
return redis.call('ZCOUNT', key, at - window, at)
"""


class VelocityCounter:
    """Counts an account's payments within the last ``window_seconds``."""

    def __init__(self, client: redis.Redis, *, window_seconds: int, prefix: str = "fraud:velocity") -> None:
        self._client = client
        self._window_ms = window_seconds * 1000
        self._prefix = prefix
        self._script = client.register_script(_SCRIPT)

    async def record(self, items: Sequence[tuple[str, str, int]]) -> list[int]:
        """Record (account id, payment id, time in ms) items; returns each account's count."""
        if not items:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for account_id, payment_id, at_ms in items:
                    await self._script(
                        keys=[f"{self._prefix}:{account_id}"],
                        args=[at_ms, self._window_ms, payment_id],
                        client=pipe,
                    )
                results = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise TransientError(f"velocity counter unavailable: {exc!r}") from exc
        return [int(r) for r in results]
