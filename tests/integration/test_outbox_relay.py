"""The transactional outbox and its relay, against real PostgreSQL and NATS JetStream."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest

from paystream.contracts.envelope import Envelope, decode
from paystream.contracts.ids import new_id
from paystream.platform.memory_bus import MemoryBus
from paystream.platform.outbox import Outbox, OutboxRelay

from ._support import eventually

PARTITIONS = 4


def _envelope(names: Any, n: int = 0) -> Envelope:
    # The type carries the test's uid, so the subject lands in the test's own stream.
    return Envelope(
        id=new_id("evt"),
        type=names.subject("happened"),
        version=1,
        occurred_at=datetime.now(UTC),
        correlation_id="corr",
        causation_id=None,
        partition_key=f"acc_{n}",
        payload={"n": n},
    )


@pytest.fixture
async def db(make_schema: Any) -> Any:
    return await make_schema("payments")


@pytest.fixture
async def stream(nats_bus: Any, bus_names: Any) -> str:
    await nats_bus.ensure_topology([bus_names.stream], [])
    return str(bus_names.stream.name)


async def _add(db: Any, envelopes: list[Envelope]) -> None:
    async with db.pool.acquire() as conn, conn.transaction():
        await Outbox(PARTITIONS).add(conn, envelopes)


async def _outbox_rows(db: Any) -> int:
    return int(await db.pool.fetchval("SELECT count(*) FROM outbox"))


async def _stream_messages(jetstream: Any, stream: str) -> int:
    info = await jetstream.stream_info(stream)
    return int(info.state.messages)


async def test_events_of_a_rolled_back_transaction_are_never_published(
    db: Any, nats_bus: Any, bus_names: Any, stream: str, jetstream: Any
) -> None:
    relay = OutboxRelay(db.pool, nats_bus, channel=f"{db.schema}_outbox")
    with pytest.raises(RuntimeError):
        async with db.pool.acquire() as conn, conn.transaction():
            await Outbox(PARTITIONS).add(conn, [_envelope(bus_names)])
            raise RuntimeError("the state change failed")

    assert await relay.relay_once() == 0
    assert await _stream_messages(jetstream, stream) == 0


async def test_committed_events_are_published_with_the_event_id_as_msg_id(
    db: Any, nats_bus: Any, bus_names: Any, stream: str, jetstream: Any
) -> None:
    envelopes = [_envelope(bus_names, n) for n in range(3)]
    await _add(db, envelopes)
    relay = OutboxRelay(db.pool, nats_bus, channel=f"{db.schema}_outbox")

    assert await relay.relay_once() == 3

    published = [await jetstream.get_msg(stream, seq) for seq in (1, 2, 3)]
    assert [m.headers["Nats-Msg-Id"] for m in published] == [e.id for e in envelopes]
    assert [decode(m.data) for m in published] == envelopes
    assert [m.subject for m in published] == [Outbox(PARTITIONS).subject(e) for e in envelopes]


async def test_published_rows_are_deleted_from_the_outbox(
    db: Any, nats_bus: Any, bus_names: Any, stream: str
) -> None:
    await _add(db, [_envelope(bus_names, n) for n in range(3)])
    relay = OutboxRelay(db.pool, nats_bus, channel=f"{db.schema}_outbox")

    await relay.relay_once()

    assert await _outbox_rows(db) == 0


async def test_a_row_published_twice_after_a_crash_is_one_stream_message(
    db: Any, nats_bus: Any, bus_names: Any, stream: str, jetstream: Any
) -> None:
    envelope = _envelope(bus_names)
    await _add(db, [envelope])
    relay = OutboxRelay(db.pool, nats_bus, channel=f"{db.schema}_outbox")
    await relay.relay_once()

    # As if the relay had died after the broker stored the event but before the delete committed.
    await _add(db, [envelope])
    assert await relay.relay_once() == 1

    assert await _stream_messages(jetstream, stream) == 1
    assert await _outbox_rows(db) == 0


async def test_a_failed_publish_leaves_the_rows_for_the_next_try(
    db: Any, bus_names: Any
) -> None:
    bus = MemoryBus()
    await bus.ensure_topology([bus_names.stream], [])
    await _add(db, [_envelope(bus_names, n) for n in range(2)])
    relay = OutboxRelay(db.pool, bus, channel=f"{db.schema}_outbox")
    bus.fail_next_publish = True

    with pytest.raises(Exception, match="injected publish failure"):
        await relay.relay_once()
    assert await _outbox_rows(db) == 2

    assert await relay.relay_once() == 2
    assert await _outbox_rows(db) == 0


async def test_a_commit_wakes_the_idle_relay_through_notify(
    db: Any, nats_bus: Any, bus_names: Any, stream: str, jetstream: Any
) -> None:
    # A poll interval far beyond the deadline: only the NOTIFY can make the relay publish in time.
    relay = OutboxRelay(db.pool, nats_bus, channel=f"{db.schema}_outbox", poll_interval=60.0)
    stopping = asyncio.Event()
    task = asyncio.create_task(relay.run(stopping))
    try:
        await _add(db, [_envelope(bus_names, 0)])
        await eventually(lambda: _stream_messages(jetstream, stream))  # relay is up and idle

        await _add(db, [_envelope(bus_names, 1)])

        async def second_published() -> bool:
            return await _stream_messages(jetstream, stream) == 2

        await eventually(second_published, timeout=10.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_while_one_copy_relays_another_skips_its_round(
    db: Any, nats_bus: Any, bus_names: Any, stream: str, jetstream: Any
) -> None:
    channel = f"{db.schema}_outbox"
    await _add(db, [_envelope(bus_names, n) for n in range(3)])
    async with db.pool.acquire() as conn, conn.transaction():
        # What a relaying copy holds for the length of its round.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", channel)
        assert await OutboxRelay(db.pool, nats_bus, channel=channel).relay_once() == 0
        assert await _stream_messages(jetstream, stream) == 0
    assert await OutboxRelay(db.pool, nats_bus, channel=channel).relay_once() == 3


async def test_copies_relaying_side_by_side_publish_in_outbox_order(
    db: Any, nats_bus: Any, bus_names: Any, stream: str, jetstream: Any
) -> None:
    envelopes = [_envelope(bus_names, n % 3) for n in range(600)]
    for start in range(0, len(envelopes), 50):
        await _add(db, envelopes[start:start + 50])
    channel = f"{db.schema}_outbox"
    relays = [OutboxRelay(db.pool, nats_bus, channel=channel, batch_size=7) for _ in range(3)]

    async def drain(relay: OutboxRelay) -> None:
        while await _outbox_rows(db):
            await relay.relay_once()

    await asyncio.gather(*(drain(relay) for relay in relays))
    sub = await jetstream.pull_subscribe(bus_names.subject(">"), stream=stream)
    published: list[str] = []
    while len(published) < len(envelopes):
        published += [decode(m.data).id for m in await sub.fetch(100, timeout=5)]
    assert published == [e.id for e in envelopes]


async def test_the_relay_outlives_the_database_dropping_every_connection(
    db: Any, nats_bus: Any, bus_names: Any, stream: str, jetstream: Any, admin_pool: Any
) -> None:
    # What a PostgreSQL crash does to a service: every connection, the LISTEN one included,
    # is cut. The relay must come back by itself (it used to die on the pooled listener).
    from paystream.platform.db import create_pool

    pool = await create_pool(db.role_url, min_size=2, max_size=4, application_name=f"relay-{db.schema}")
    relay = OutboxRelay(pool, nats_bus, channel=f"{db.schema}_outbox", poll_interval=0.2)
    stopping = asyncio.Event()
    task = asyncio.create_task(relay.run(stopping))
    try:
        await _add(db, [_envelope(bus_names, 0)])
        await eventually(lambda: _stream_messages(jetstream, stream))
        cut = await admin_pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            f"relay-{db.schema}",
        )
        assert cut >= 1
        await asyncio.sleep(0.5)
        await _add(db, [_envelope(bus_names, n) for n in range(1, 4)])

        async def all_published() -> bool:
            return await _stream_messages(jetstream, stream) == 4

        await eventually(all_published, timeout=15.0)
        assert not task.done(), task.exception() if task.done() else None
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=15)
        await pool.close()
