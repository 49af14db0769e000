"""A batch goes to its stream whole, in order, or not at all.

Pipelined one by one, a batch cut by a dying NATS node could be stored with a hole in it: the
first messages written into the dead node's socket were lost, the rest sat in the client's
reconnect buffer and were stored on the next node, so the relay's retry put the lost ones
behind them (an e2e run of tests/e2e/test_scale_out.py saw one account's payments screened out
of order that way). Each stream's share of a batch now goes as one atomic batch.
"""

from __future__ import annotations

from typing import Any

from nats.js.api import StreamConfig

from paystream.contracts.topology import StreamSpec
from paystream.platform.bus import OutgoingMessage
from paystream.platform.errors import TransientError
from paystream.platform.nats_bus import NatsBus


async def _stored(jetstream: Any, stream: str) -> list[bytes]:
    last = (await jetstream.stream_info(stream)).state.last_seq
    return [(await jetstream.get_msg(stream, seq)).data for seq in range(1, last + 1)]


async def test_a_batch_with_a_message_the_stream_refuses_stores_none_of_it(
    nats_bus: NatsBus, jetstream: Any, bus_names: Any,
) -> None:
    stream = bus_names.stream
    # The stream refuses messages over 400 bytes, headers included: the middle one here.
    await jetstream.add_stream(StreamConfig(
        name=stream.name, subjects=list(stream.subjects), allow_atomic=True, max_msg_size=400))
    subject = bus_names.subject("event", "0")
    batch = [OutgoingMessage(subject, b"first", "m1"), OutgoingMessage(subject, b"x" * 600, "m2"),
             OutgoingMessage(subject, b"third", "m3")]
    try:
        await nats_bus.publish(batch)
    except TransientError as exc:
        assert "refused" in str(exc)
    else:
        raise AssertionError("a batch with a refused message was taken")
    assert await _stored(jetstream, stream.name) == []  # not "first" and "third"

    # The relay's retry, once the message is mended: all of it, in the order given.
    batch[1] = OutgoingMessage(subject, b"second", "m2")
    assert await nats_bus.publish(batch) == 3
    assert await _stored(jetstream, stream.name) == [b"first", b"second", b"third"]


async def test_a_stream_made_without_atomic_batches_still_gets_the_batch_in_order(
    nats_bus: NatsBus, jetstream: Any, bus_names: Any,
) -> None:
    stream = bus_names.stream
    await jetstream.add_stream(StreamConfig(name=stream.name, subjects=list(stream.subjects)))
    subject = bus_names.subject("event", "0")
    batch = [OutgoingMessage(subject, str(k).encode(), f"m{k}") for k in range(5)]
    assert await nats_bus.publish(batch) == 5
    assert await nats_bus.publish(batch) == 0  # de-duplicated one by one
    assert await _stored(jetstream, stream.name) == [str(k).encode() for k in range(5)]


async def test_provisioned_streams_take_atomic_batches(
    nats_bus: NatsBus, jetstream: Any, bus_names: Any,
) -> None:
    await nats_bus.ensure_topology([bus_names.stream], [])
    info = await jetstream.stream_info(bus_names.stream.name)
    assert info.config.allow_atomic is True


async def test_a_batch_over_two_streams_keeps_each_streams_order(
    nats_bus: NatsBus, jetstream: Any, bus_names: Any, uid: str,
) -> None:
    other = StreamSpec(name=f"S_{uid}_B", subjects=(f"{uid}b.>",))
    await nats_bus.ensure_topology([bus_names.stream, other], [])
    a, b = bus_names.subject("event", "0"), f"{uid}b.event.0"
    batch = [OutgoingMessage(a if k % 2 else b, str(k).encode(), f"m{k}") for k in range(6)]
    assert await nats_bus.publish(batch) == 6
    assert await _stored(jetstream, bus_names.stream.name) == [b"1", b"3", b"5"]
    assert await _stored(jetstream, other.name) == [b"0", b"2", b"4"]
