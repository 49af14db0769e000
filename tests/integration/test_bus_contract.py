"""The `Bus` contract, run against the in-memory fake and the real NATS JetStream adapter.

Whatever a service relies on from the bus is stated here once; both adapters must pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from paystream.contracts.topology import ConsumerSpec
from paystream.platform.bus import OutgoingMessage, Subscription
from paystream.platform.errors import TransientError
from paystream.platform.memory_bus import MemoryBus

from ._support import eventually, fetch_n

# A fetch that should come back empty waits this long: long enough for a redelivery the
# adapter would make at once, short enough to keep the suite quick.
QUIET = 0.3


@dataclass
class Harness:
    """One adapter plus the test's own stream."""

    bus: Any  # MemoryBus | NatsBus: both offer delete_consumer besides the Bus port
    names: Any  # conftest.BusNames

    async def consumer(self, name: str = "c", *filters: str) -> ConsumerSpec:
        spec = self.names.consumer(name, *filters)
        await self.bus.ensure_topology([self.names.stream], [spec])
        return spec

    async def subscribe(self, name: str = "c", *filters: str) -> Subscription:
        return await self.bus.subscribe(await self.consumer(name, *filters))

    def message(self, data: bytes, msg_id: str, *tokens: str) -> OutgoingMessage:
        return OutgoingMessage(self.names.subject(*(tokens or ("event",))), data, msg_id)

    async def publish(self, *messages: OutgoingMessage) -> int:
        return int(await self.bus.publish(list(messages)))


@pytest.fixture(params=["memory", "nats"])
def adapter(request: pytest.FixtureRequest) -> Any:
    # Synchronous, so it can pull in the (async) NATS fixture only for the "nats" case.
    if request.param == "memory":
        return MemoryBus()
    return request.getfixturevalue("nats_bus")


@pytest.fixture
async def harness(adapter: Any, bus_names: Any) -> AsyncIterator[Harness]:
    bus = adapter
    await bus.ensure_topology([bus_names.stream], [])
    yield Harness(bus, bus_names)


async def test_published_message_is_fetched_as_a_first_delivery(harness: Harness) -> None:
    subscription = await harness.subscribe()
    stored = await harness.publish(harness.message(b"hello", "m1", "greeting", "3"))

    [delivery] = await fetch_n(subscription, 1)

    assert stored == 1
    assert delivery.subject == harness.names.subject("greeting", "3")
    assert delivery.data == b"hello"
    assert delivery.num_delivered == 1


async def test_message_ids_seen_within_the_window_are_stored_once(harness: Harness) -> None:
    subscription = await harness.subscribe()

    first = await harness.publish(harness.message(b"one", "same-id"))
    again = await harness.publish(harness.message(b"one", "same-id"), harness.message(b"two", "other"))

    deliveries = await fetch_n(subscription, 2)
    assert (first, again) == (1, 1)
    assert [d.data for d in deliveries] == [b"one", b"two"]
    assert await subscription.fetch(1, timeout=QUIET) == []


async def test_a_batch_sent_again_with_newer_messages_stores_only_those_in_order(
    harness: Harness,
) -> None:
    # The relay's retry after a publish whose answer was lost: the rows it sent are there
    # already, and rows written since come after them.
    sub = await harness.subscribe()
    first = [harness.message(str(k).encode(), f"m{k}") for k in range(3)]
    assert await harness.publish(*first) == 3
    later = [harness.message(str(k).encode(), f"m{k}") for k in range(3, 6)]
    assert await harness.publish(*first, *later) == 3
    got = await fetch_n(sub, 6)
    assert [d.data for d in got] == [str(k).encode() for k in range(6)]


async def test_ack_settles_the_message(harness: Harness) -> None:
    subscription = await harness.subscribe()
    await harness.publish(harness.message(b"x", "m1"))
    [delivery] = await fetch_n(subscription, 1)

    await delivery.ack()

    async def settled() -> bool:
        return await subscription.pending() == 0

    await eventually(settled)
    assert await subscription.fetch(1, timeout=QUIET) == []


async def test_nak_redelivers_with_delivery_count_raised(harness: Harness) -> None:
    subscription = await harness.subscribe()
    await harness.publish(harness.message(b"x", "m1"))
    [first] = await fetch_n(subscription, 1)

    await first.nak()

    [second] = await fetch_n(subscription, 1)
    assert second.data == b"x"
    assert second.num_delivered == first.num_delivered + 1 == 2


async def test_term_stops_redelivery(harness: Harness) -> None:
    subscription = await harness.subscribe()
    await harness.publish(harness.message(b"x", "m1"))
    [delivery] = await fetch_n(subscription, 1)

    await delivery.term()

    async def settled() -> bool:
        return await subscription.pending() == 0

    await eventually(settled)
    assert await subscription.fetch(1, timeout=QUIET) == []


async def test_consumer_receives_only_its_filter_subjects(harness: Harness) -> None:
    subscription = await harness.subscribe("only-a", harness.names.subject("a", ">"))
    await harness.publish(
        harness.message(b"a1", "m1", "a", "1"),
        harness.message(b"b1", "m2", "b", "1"),
        harness.message(b"a2", "m3", "a", "2"),
    )

    deliveries = await fetch_n(subscription, 2)

    assert [d.data for d in deliveries] == [b"a1", b"a2"]
    assert await subscription.fetch(1, timeout=QUIET) == []


async def test_pending_counts_messages_not_yet_acknowledged(harness: Harness) -> None:
    subscription = await harness.subscribe()
    await harness.publish(*(harness.message(b"x", f"m{i}") for i in range(3)))
    assert await subscription.pending() == 3

    [delivery] = await fetch_n(subscription, 1)
    assert await subscription.pending() == 3  # fetched but not acknowledged still counts

    await delivery.ack()

    async def two_left() -> bool:
        return await subscription.pending() == 2

    await eventually(two_left)


async def test_recreated_consumer_replays_the_stream_from_the_start(harness: Harness) -> None:
    spec = await harness.consumer()
    subscription = await harness.bus.subscribe(spec)
    await harness.publish(harness.message(b"one", "m1"), harness.message(b"two", "m2"))
    for delivery in await fetch_n(subscription, 2):
        await delivery.ack()

    await harness.bus.delete_consumer(spec)
    await harness.bus.ensure_topology([harness.names.stream], [spec])
    replay = await harness.bus.subscribe(spec)

    deliveries = await fetch_n(replay, 2)
    assert [d.data for d in deliveries] == [b"one", b"two"]
    assert [d.num_delivered for d in deliveries] == [1, 1]


async def test_redeliver_in_flight_hands_unsettled_messages_to_the_next_fetch(harness: Harness) -> None:
    # A partition's old owner died holding "two": its new owner must get it now, not after
    # ack_wait, and then "three"; "one" was settled and is not the new owner's business.
    spec = await harness.consumer()
    dead = await harness.bus.subscribe(spec)
    await harness.publish(harness.message(b"one", "m1"), harness.message(b"two", "m2"))
    first, _held = await fetch_n(dead, 2)
    await first.ack()
    await harness.publish(harness.message(b"three", "m3"))

    async def two_held_by_nobody_alive() -> bool:
        return (await harness.bus.consumer_state(spec)).in_flight == 1

    await eventually(two_held_by_nobody_alive)
    await harness.bus.redeliver_in_flight(spec)
    heir = await harness.bus.subscribe(spec)

    deliveries = await fetch_n(heir, 2)
    assert [d.data for d in deliveries] == [b"two", b"three"]
    for delivery in deliveries:
        await delivery.ack()

    async def all_settled() -> bool:
        return (await harness.bus.consumer_state(spec)).pending == 0

    await eventually(all_settled)


async def test_publish_to_a_subject_no_stream_captures_raises_transient_error(
    harness: Harness,
) -> None:
    stray = OutgoingMessage(f"nowhere.{harness.names.uid}", b"x", "m1")

    with pytest.raises(TransientError):
        await harness.bus.publish([stray])


async def test_a_missing_durable_raises_transient_error_by_the_first_fetch(
    harness: Harness,
) -> None:
    # JetStream binds without asking the server, so the error may come from subscribe or fetch.
    with pytest.raises(TransientError):
        subscription = await harness.bus.subscribe(harness.names.consumer("never-created"))
        await subscription.fetch(1, timeout=1.0)
