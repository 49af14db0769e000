"""The edge rate limiter against a real Redis: exact under concurrency, atomic across buckets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from paystream.gateway.rate_limit import Limit, LimiterUnavailable, RateLimiter
from paystream.gateway.rate_limit import redis_client as limiter_redis
from paystream.stack.ports import free_port


def _limiter(client: Any, uid: str, **limits: str) -> RateLimiter:
    return RateLimiter(client, {k: Limit.parse(v) for k, v in limits.items()},
                       fail_closed=frozenset({"auth"}), prefix=uid)


async def test_concurrent_requests_never_get_more_than_the_limit(redis_url: str, uid: str) -> None:
    client = limiter_redis(redis_url, timeout=5.0)  # the gateway's own client setup
    limiter = _limiter(client, uid, money="50/60s")
    try:
        decisions = await asyncio.gather(*(limiter.check("money", "client:a") for _ in range(500)))
    finally:
        await client.aclose()
    assert sum(d.allowed for d in decisions) == 50


async def test_a_refused_request_charges_none_of_its_buckets(redis_client: Any, uid: str) -> None:
    limiter = _limiter(redis_client, uid, money="3/60s")
    for _ in range(3):
        assert (await limiter.check("money", "addr:1")).allowed
    refused = await limiter.check("money", "addr:1", "client:b")
    assert not refused.allowed
    # client:b was not charged by the refused request: it still has all three.
    assert [(await limiter.check("money", "client:b")).allowed for _ in range(4)] == [True] * 3 + [False]


async def test_answers_carry_remaining_and_retry_after(redis_client: Any, uid: str) -> None:
    limiter = _limiter(redis_client, uid, read="3/60s")
    remaining = [(await limiter.check("read", "client:c")).remaining for _ in range(3)]
    refused = await limiter.check("read", "client:c")
    assert remaining == [2, 1, 0]
    assert not refused.allowed
    headers = refused.headers()
    assert headers["RateLimit-Limit"] == "3" and headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(headers["Retry-After"]) <= 20  # one slot comes back every 20 s
    assert headers["RateLimit-Policy"] == "3;w=60"


async def test_the_bucket_refills_at_the_limit_rate(redis_client: Any, uid: str) -> None:
    limiter = _limiter(redis_client, uid, write="5/1s")
    while (await limiter.check("write", "client:d")).allowed:
        pass
    started = time.monotonic()
    while not (await limiter.check("write", "client:d")).allowed:
        assert time.monotonic() - started < 2, "no slot came back"
        await asyncio.sleep(0.01)
    assert time.monotonic() - started <= 0.25  # one slot per 200 ms


@pytest.fixture
async def unreachable_redis() -> Any:
    client = limiter_redis(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    yield client
    await client.aclose()


async def test_without_redis_sign_in_fails_closed(unreachable_redis: Any, uid: str) -> None:
    limiter = _limiter(unreachable_redis, uid, auth="100/60s")
    with pytest.raises(LimiterUnavailable):
        await limiter.check("auth", "addr:1")


async def test_without_redis_other_routes_keep_a_per_process_limit(unreachable_redis: Any, uid: str) -> None:
    limiter = _limiter(unreachable_redis, uid, money="5/60s")
    decisions = [await limiter.check("money", "client:e") for _ in range(8)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3


async def test_without_redis_gateway_copies_together_allow_no_more_than_the_limit(
    unreachable_redis: Any, uid: str
) -> None:
    copies = [
        RateLimiter(unreachable_redis, {"money": Limit.parse("9/60s")}, fail_closed=frozenset(),
                    prefix=uid, copies=3)
        for _ in range(3)
    ]
    allowed = [sum([(await c.check("money", "client:f")).allowed for _ in range(9)]) for c in copies]
    assert allowed == [3, 3, 3]


async def test_gateway_copies_share_one_exact_limit_through_redis(redis_url: str, uid: str) -> None:
    clients = [limiter_redis(redis_url, timeout=5.0) for _ in range(2)]
    copies = [
        RateLimiter(c, {"money": Limit.parse("40/60s")}, fail_closed=frozenset(), prefix=uid, copies=2)
        for c in clients
    ]
    try:
        decisions = await asyncio.gather(
            *(copies[n % 2].check("money", "client:g") for n in range(200))
        )
    finally:
        for c in clients:
            await c.aclose()
    assert sum(d.allowed for d in decisions) == 40


@pytest.mark.parametrize("text", ["", "10", "x/1s", "0/1s", "10/1d", "-1/1s"])
def test_a_malformed_limit_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        Limit.parse(text)
