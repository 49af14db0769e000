"""Step 2 of the request path, rate limits: GCRA in Redis, one atomic script per decision.

`RateLimit` is the step (a request in; None, or the 429/503 to answer); `RateLimiter` decides.

Each request is checked against two buckets of its route class at once — one for the
API client, one for the source address — and is admitted only if both have room; when it
is refused, neither is charged. GCRA (the generic cell rate algorithm) keeps one
timestamp per bucket (the "theoretical arrival time"), so a decision is a single
round trip, exact under any concurrency (Redis runs the script atomically), and gives the
``Retry-After`` and ``RateLimit-*`` answers directly.

When Redis cannot answer in time (``redis_timeout``):

* the token endpoint **fails closed**: no credential is checked without its limit (503);
* every other route **degrades to a per-process limiter**, so the API stays up and still
  bounded. With N gateway copies each allows ``ceil(count / N)`` of a limit, so together
  they never allow more than the limit (a client whose connections all reach one copy
  gets less). Money moves correctly either way: limits protect capacity, and
  correctness never depends on them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from paystream.platform.http import problem
from paystream.platform.observability import get_logger

log = get_logger(__name__)

# KEYS: one bucket per key. ARGV: now (µs), then per key: emission interval (µs), burst
# tolerance (µs). Returns {allowed, index of the tightest bucket, remaining, reset µs, retry µs}.
_GCRA = """
local now = tonumber(ARGV[1])
local new_tats = {}
local worst_remaining, worst_index, worst_reset = nil, 1, 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - tolerance - interval
  if allow_at > now then
    return {0, i, 0, tat - now, allow_at - now}
  end
  new_tats[i] = new_tat
  local remaining = math.floor((now - allow_at) / interval)
  if worst_remaining == nil or remaining < worst_remaining then
    worst_remaining, worst_index, worst_reset = remaining, i, new_tat - now
  end
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, new_tats[i], 'PX', math.ceil((new_tats[i] - now) / 1000) + 1000)
end
return {1, worst_index, worst_remaining, worst_reset, 0}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    """``count`` requests per ``period`` seconds, with bursts of up to ``count``."""

    count: int
    period: float

    @classmethod
    def parse(cls, text: str) -> Limit:
        """``"100/60s"``, ``"20/1s"``, ``"5/1m"`` → a Limit."""
        count, _, period = text.partition("/")
        unit = period[-1:]
        scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(unit)
        if not count.isdigit() or scale is None or int(count) < 1:
            raise ValueError(f"a rate limit looks like 100/60s, not {text!r}")
        return cls(int(count), float(period[:-1] or 1) * scale)

    @property
    def interval_us(self) -> int:
        return max(1, int(self.period * 1_000_000 / self.count))

    def policy(self) -> str:
        return f"{self.count};w={math.ceil(self.period)}"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: Limit
    remaining: int
    reset_seconds: float  # until the bucket is full again
    retry_after_seconds: float  # 0 when allowed

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` (IETF draft) and, when refused, ``Retry-After``."""
        headers = {
            "RateLimit-Limit": str(self.limit.count),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(max(0, math.ceil(self.reset_seconds))),
            "RateLimit-Policy": self.limit.policy(),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_seconds)))
        return headers


def redis_client(url: str, *, timeout: float, max_connections: int = 64) -> redis.Redis:
    """A client for the limiter: a bounded pool that waits for a free connection (so a burst
    queues instead of failing over to the local limiter), no retries (a decision that cannot
    be made in ``timeout`` is degraded at once)."""
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


# After Redis fails, decide locally for this long before asking it again (fail fast).
RETRY_REDIS_AFTER = 2.0


class LimiterUnavailable(Exception):
    """Redis could not decide, and this route class fails closed."""


class RateLimiter:
    """Decides per (route class, client, source address); see the module docstring."""

    def __init__(
        self, client: redis.Redis, limits: dict[str, Limit], *, fail_closed: frozenset[str],
        prefix: str = "paystream:rl", copies: int = 1,
    ) -> None:
        self._redis = client
        self._script = client.register_script(_GCRA)
        self._limits = limits
        self._fail_closed = fail_closed
        self._prefix = prefix
        self._local: dict[str, float] = {}  # fallback buckets: key -> TAT (µs)
        # This copy's part of each limit while Redis is away.
        self._local_limits = {
            name: Limit(max(1, math.ceil(limit.count / copies)), limit.period)
            for name, limit in limits.items()
        }
        self._redis_down_until = 0.0

    def limit_of(self, route_class: str) -> Limit:
        return self._limits[route_class]

    async def check(self, route_class: str, *subjects: str) -> Decision:
        """Charge one request to every ``subject`` bucket of ``route_class``, or refuse."""
        limit = self._limits[route_class]
        keys = [f"{self._prefix}:{route_class}:{s}" for s in subjects]
        now = time.time_ns() // 1000
        tolerance = limit.interval_us * (limit.count - 1)
        args: list[int] = [now]
        for _ in keys:
            args += [limit.interval_us, tolerance]
        try:
            if time.monotonic() < self._redis_down_until:
                raise ConnectionError("redis failed moments ago")
            allowed, _, remaining, reset, retry = await self._script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            if not isinstance(exc, ConnectionError) or time.monotonic() >= self._redis_down_until:
                log.warning("rate_limiter_degraded", route_class=route_class, error=repr(exc))
                self._redis_down_until = time.monotonic() + RETRY_REDIS_AFTER
            if route_class in self._fail_closed:
                raise LimiterUnavailable(route_class) from exc
            return self._check_locally(self._local_limits[route_class], keys, now)
        return Decision(bool(allowed), limit, int(remaining), int(reset) / 1e6, int(retry) / 1e6)

    def _check_locally(self, limit: Limit, keys: list[str], now: int) -> Decision:
        """The same GCRA, in this process only (Redis is unreachable)."""
        tolerance = limit.interval_us * (limit.count - 1)
        new_tats = []
        remaining = limit.count
        for key in keys:
            tat = max(self._local.get(key, now), now)
            new_tat = tat + limit.interval_us
            allow_at = new_tat - tolerance - limit.interval_us
            if allow_at > now:
                return Decision(False, limit, 0, (tat - now) / 1e6, (allow_at - now) / 1e6)
            new_tats.append(new_tat)
            remaining = min(remaining, int((now - allow_at) // limit.interval_us))
        for key, new_tat in zip(keys, new_tats, strict=True):
            self._local[key] = new_tat
        if len(self._local) > 100_000:  # forget idle buckets rather than grow without bound
            self._local = {k: v for k, v in self._local.items() if v > now}
        return Decision(True, limit, remaining, (max(new_tats) - now) / 1e6, 0.0)


class RateLimit:
    """The step: charge a request to its address's and its client's buckets, or refuse it.
    Without a limiter (``None``) every request goes on."""

    def __init__(self, limiter: RateLimiter | None) -> None:
        self.limiter = limiter

    async def __call__(self, route_class: str, request: Request, client_id: str | None) -> Response | None:
        """None when the request may go on; else the 429 (or, failing closed, 503) to send."""
        if self.limiter is None:
            return None
        subjects = [f"addr:{request.client.host if request.client else 'unknown'}"]
        if client_id:
            subjects.append(f"client:{client_id}")
        try:
            decision = await self.limiter.check(route_class, *subjects)
        except LimiterUnavailable:
            return problem(503, "rate_limiter_unavailable", "Service unavailable",
                           "this request cannot be checked against its rate limit now; retry shortly",
                           headers={"Retry-After": "5"})
        if decision.allowed:
            return None
        return problem(429, "rate_limited", "Too many requests",
                       f"the {route_class} rate limit ({decision.limit.count} per "
                       f"{decision.limit.period:g}s) is exhausted; retry after the Retry-After delay",
                       headers=decision.headers())
