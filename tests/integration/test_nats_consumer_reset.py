"""A partition's new owner rewinds the JetStream durable in place: it never deletes it.

Deleting and re-adding the durable (what the adapter did before the reset API) leaves a moment
with no durable; a copy SIGKILLed in that moment lost the partition's consumer for good, and
its events waited for the next `paystream migrate` (game day `kill` found it).
"""

from __future__ import annotations

from typing import Any

from paystream.platform.bus import OutgoingMessage
from paystream.platform.nats_bus import NatsBus

from ._support import eventually, fetch_n


async def test_redeliver_in_flight_resets_the_durable_without_remaking_it(
    nats_bus: NatsBus, jetstream: Any, bus_names: Any,
) -> None:
    spec = bus_names.consumer("reset")
    await nats_bus.ensure_topology([bus_names.stream], [spec])
    before = await jetstream.consumer_info(spec.stream, spec.durable)
    subscription = await nats_bus.subscribe(spec)
    await nats_bus.publish([OutgoingMessage(bus_names.subject("event"), b"x", "m1")])
    [held] = await fetch_n(subscription, 1)

    async def in_flight() -> bool:
        return (await nats_bus.consumer_state(spec)).in_flight == 1

    await eventually(in_flight)
    await nats_bus.redeliver_in_flight(spec)

    after = await jetstream.consumer_info(spec.stream, spec.durable)
    assert after.created == before.created  # the same durable, not a new one of the same name
    assert after.config.filter_subjects == before.config.filter_subjects
    [again] = await fetch_n(await nats_bus.subscribe(spec), 1)
    assert again.data == held.data
