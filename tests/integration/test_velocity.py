"""The fraud velocity counter on a real Redis: one count per payment, however often it is
screened, and a payment screened again later is not charged with the payments after it."""

from __future__ import annotations

from typing import Any

from paystream.fraud.velocity import VelocityCounter


async def test_a_payment_counted_again_does_not_count_twice(redis_client: Any, uid: str) -> None:
    counter = VelocityCounter(redis_client, window_seconds=60, prefix=f"{uid}:v")
    assert await counter.record([("acc", "p1", 1_000), ("acc", "p2", 1_100)]) == [1, 2]
    assert await counter.record([("acc", "p2", 1_200)]) == [2]


async def test_a_rescreen_counts_the_window_that_ended_when_the_payment_came(redis_client: Any, uid: str) -> None:
    counter = VelocityCounter(redis_client, window_seconds=60, prefix=f"{uid}:v")
    t0 = 1_000_000
    assert await counter.record([("acc", "early", t0)]) == [1]
    later = [("acc", f"later{n}", t0 + 1_000 + n) for n in range(30)]
    assert (await counter.record(later))[-1] == 31
    # `early` screened again 40 s on (after a screening deadline): its count is still its own.
    assert await counter.record([("acc", "early", t0 + 40_000)]) == [1]
    assert await counter.record([("acc", "later29", t0 + 41_000)]) == [31]


async def test_payments_older_than_the_window_are_not_counted(redis_client: Any, uid: str) -> None:
    counter = VelocityCounter(redis_client, window_seconds=60, prefix=f"{uid}:v")
    assert await counter.record([("acc", "old", 1_000)]) == [1]
    assert await counter.record([("acc", "new", 1_000 + 61_000)]) == [1]
