"""The consumer runtime (inbox de-duplication, retries, dead letters) on real NATS and PostgreSQL.

The handler under test writes one ``effects`` row per event it applies, in the consumer's
transaction, so the rows count how often each event took effect. ``event_id`` is not unique
on purpose: an event applied twice shows up as two rows instead of an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import structlog
from structlog.testing import capture_logs

from paystream.contracts.envelope import Envelope, encode
from paystream.contracts.ids import new_id
from paystream.contracts.topology import ConsumerSpec
from paystream.platform.bus import Delivery, OutgoingMessage, Subscription
from paystream.platform.consumer import MAX_FAILED_ATTEMPTS, EventConsumer
from paystream.platform.db import create_pool
from paystream.platform.observability import log_on_commit

from ._support import eventually, fetch_n

# A fetch that should come back empty waits this long.
QUIET = 0.3


def _envelope(n: int, **payload: Any) -> Envelope:
    return Envelope(
        id=new_id("evt"),
        type="tests.happened",
        version=1,
        occurred_at=datetime.now(UTC),
        correlation_id=f"corr_{n}",
        causation_id=None,
        partition_key=f"acc_{n}",
        payload={"n": n, **payload},
    )


@dataclass
class RecordingSubscription:
    """Passes fetches through and remembers every delivery (to see redeliveries)."""

    inner: Subscription
    seen: list[Delivery]

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        got = await self.inner.fetch(batch, timeout)
        self.seen.extend(got)
        return got

    async def pending(self) -> int:
        return await self.inner.pending()


@dataclass
class RecordingBus:
    """The real bus, recording every delivery the consumer's subscriptions hand out."""

    inner: Any
    seen: list[Delivery] = field(default_factory=list)

    async def subscribe(self, consumer: ConsumerSpec) -> Subscription:
        return RecordingSubscription(await self.inner.subscribe(consumer), self.seen)


@dataclass
class Rig:
    """The test's stream and durable, the service role's pool, and what the handler saw."""

    bus: Any  # NatsBus
    js: Any  # raw JetStream context, to ask the broker about the durable
    names: Any  # conftest.BusNames
    spec: ConsumerSpec
    pool: asyncpg.Pool  # as the service's own role
    admin: asyncpg.Pool  # superuser, search_path = the schema
    calls: list[list[str]] = field(default_factory=list)

    async def publish(self, *items: Envelope | bytes, msg_ids: list[str] | None = None) -> int:
        messages = []
        for i, item in enumerate(items):
            data = item if isinstance(item, bytes) else encode(item)
            if msg_ids:
                msg_id = msg_ids[i]
            else:
                msg_id = item.id if isinstance(item, Envelope) else f"raw-{i}"
            messages.append(OutgoingMessage(self.names.subject("happened", "0"), data, msg_id))
        return int(await self.bus.publish(messages))

    async def record(self, conn: asyncpg.Connection, envelopes: list[Envelope]) -> None:
        """The effect of applying ``envelopes``: one row each, in the consumer's transaction."""
        self.calls.append([e.id for e in envelopes])
        await conn.executemany(
            "INSERT INTO effects (event_id) VALUES ($1)", [(e.id,) for e in envelopes]
        )

    def consumer(self, handler: Any = None, bus: Any = None) -> EventConsumer:
        return EventConsumer(
            spec=self.spec,
            bus=bus or self.bus,
            pool=self.pool,
            handler=handler or self.record,
            fetch_timeout=0.2,
        )

    async def effects(self) -> dict[str, int]:
        rows = await self.admin.fetch(
            "SELECT event_id, count(*) AS n FROM effects GROUP BY event_id"
        )
        return {row["event_id"]: row["n"] for row in rows}

    async def inbox(self) -> set[str]:
        rows = await self.admin.fetch(
            "SELECT event_id FROM inbox WHERE consumer = $1", self.spec.durable
        )
        return {row["event_id"] for row in rows}

    async def dead_letters(self) -> list[asyncpg.Record]:
        return await self.admin.fetch(
            "SELECT consumer, event_id, subject, body, error, created_at "
            "FROM dead_letters ORDER BY id"
        )

    async def settled(self) -> bool:
        """Nothing left on the durable: every message acked or terminated."""
        info = await self.js.consumer_info(self.spec.stream, self.spec.durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0) == 0

    @contextlib.asynccontextmanager
    async def running(self, consumer: EventConsumer) -> AsyncIterator[None]:
        stopping = asyncio.Event()
        task = asyncio.create_task(consumer.run(stopping))
        try:
            yield
        finally:
            stopping.set()
            try:
                async with asyncio.timeout(10):
                    await task
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise


@pytest.fixture
async def rig(
    make_schema: Any, nats_bus: Any, jetstream: Any, bus_names: Any
) -> AsyncIterator[Rig]:
    db = await make_schema("payments")  # any messaging service schema has inbox and dead_letters
    await db.pool.execute(
        "CREATE TABLE effects (seq bigserial PRIMARY KEY, event_id text NOT NULL)"
    )
    spec = bus_names.consumer("inbox")
    await nats_bus.ensure_topology([bus_names.stream], [spec])
    pool = await create_pool(
        db.role_url, min_size=1, max_size=4, application_name="paystream-tests"
    )
    try:
        yield Rig(nats_bus, jetstream, bus_names, spec, pool, db.pool)
    finally:
        await pool.close()


async def test_a_fetched_batch_is_applied_in_one_handler_call_and_acked(rig: Rig) -> None:
    envelopes = [_envelope(n) for n in range(5)]
    await rig.publish(*envelopes)
    subscription = await rig.bus.subscribe(rig.spec)
    deliveries = await fetch_n(subscription, 5)

    await rig.consumer().process(deliveries)

    assert rig.calls == [[e.id for e in envelopes]]
    assert await rig.effects() == {e.id: 1 for e in envelopes}
    assert await rig.inbox() == {e.id for e in envelopes}
    await eventually(rig.settled)
    assert await subscription.fetch(1, timeout=QUIET) == []


async def test_a_running_consumer_applies_every_published_event_once(rig: Rig) -> None:
    envelopes = [_envelope(n) for n in range(20)]
    await rig.publish(*envelopes)

    async with rig.running(rig.consumer()):
        await eventually(rig.settled)

    assert await rig.effects() == {e.id: 1 for e in envelopes}
    assert await rig.dead_letters() == []


async def test_one_event_under_two_msg_ids_in_separate_batches_is_applied_once(rig: Rig) -> None:
    envelope = _envelope(0)
    # Different broker msg ids: JetStream's de-duplication lets both copies into the stream.
    assert await rig.publish(envelope, envelope, msg_ids=["copy-1", "copy-2"]) == 2
    subscription = await rig.bus.subscribe(rig.spec)
    first, second = await fetch_n(subscription, 2)
    consumer = rig.consumer()

    await consumer.process([first])
    await consumer.process([second])

    assert await rig.effects() == {envelope.id: 1}
    assert rig.calls == [[envelope.id]]  # the second copy never reached the handler
    await eventually(rig.settled)  # ... and was acked all the same


async def test_one_event_twice_in_the_same_batch_is_applied_once(rig: Rig) -> None:
    envelope, other = _envelope(0), _envelope(1)
    assert await rig.publish(envelope, other, envelope, msg_ids=["a", "b", "c"]) == 3
    subscription = await rig.bus.subscribe(rig.spec)
    deliveries = await fetch_n(subscription, 3)

    await rig.consumer().process(deliveries)

    assert await rig.effects() == {envelope.id: 1, other.id: 1}
    assert rig.calls == [[envelope.id, other.id]]
    await eventually(rig.settled)


async def test_a_transient_failure_mid_batch_rolls_back_and_its_retry_in_place_applies_once(
    rig: Rig,
) -> None:
    envelopes = [_envelope(n) for n in range(4)]
    await rig.publish(*envelopes)
    failed: list[list[str]] = []

    async def crash_once(conn: asyncpg.Connection, batch: list[Envelope]) -> None:
        await rig.record(conn, batch)  # the effects are written...
        if not failed:
            failed.append([e.id for e in batch])
            # ... then PostgreSQL cancels the statement: a transient error, so the batch is retried.
            await conn.execute("SET LOCAL statement_timeout = '20ms'")
            await conn.execute("SELECT pg_sleep(5)")

    bus = RecordingBus(rig.bus)
    async with rig.running(rig.consumer(crash_once, bus)):
        await eventually(rig.settled, timeout=15)

    [failed_ids] = failed
    assert await rig.effects() == {e.id: 1 for e in envelopes}
    assert set(failed_ids) <= {e.id for e in envelopes}
    # Retried where it was, not redelivered: nothing came from the broker twice.
    assert all(d.num_delivered == 1 for d in bus.seen)
    assert await rig.dead_letters() == []


async def test_after_a_transient_failure_the_retried_events_still_apply_before_the_next_ones(
    rig: Rig,
) -> None:
    # One partition's events must apply in order (seed 001: a slow or flapping database). A
    # batch that fails transiently used to be nak'd with a delay, and the next batches overtook it.
    envelopes = [_envelope(n) for n in range(24)]
    await rig.publish(*envelopes)
    failed: list[int] = []

    async def crash_on_the_second_batch(conn: asyncpg.Connection, batch: list[Envelope]) -> None:
        await rig.record(conn, batch)
        if not failed and any(e.payload["n"] == 5 for e in batch):
            failed.append(len(batch))
            await conn.execute("SET LOCAL statement_timeout = '20ms'")
            await conn.execute("SELECT pg_sleep(5)")

    consumer = EventConsumer(spec=rig.spec, bus=rig.bus, pool=rig.pool, handler=crash_on_the_second_batch,
                             fetch_timeout=0.2, batch=4)
    async with rig.running(consumer):
        await eventually(rig.settled, timeout=20)

    assert failed == [4]
    order = [row["event_id"] for row in await rig.admin.fetch("SELECT event_id FROM effects ORDER BY seq")]
    n_of = {e.id: e.payload["n"] for e in envelopes}
    assert [n_of[i] for i in order] == list(range(len(envelopes)))


async def test_a_batch_that_rolls_back_leaves_no_log_line_and_its_retry_one_per_event(rig: Rig) -> None:
    """A handler's lines about what it did (`log_on_commit`) are written only by the attempt
    that commits: an operator never reads "posted" for an effect that was rolled back."""
    envelopes = [_envelope(n) for n in range(3)]
    await rig.publish(*envelopes)
    attempts: list[int] = []
    log = structlog.get_logger("tests.consumer")

    async def log_then_crash_once(conn: asyncpg.Connection, batch: list[Envelope]) -> None:
        attempts.append(len(batch))
        for envelope in batch:
            log_on_commit(log, "applied", event_id=envelope.id, attempt=len(attempts))
        await rig.record(conn, batch)
        if len(attempts) == 1:
            await conn.execute("SET LOCAL statement_timeout = '20ms'")
            await conn.execute("SELECT pg_sleep(5)")

    with capture_logs() as lines:
        async with rig.running(rig.consumer(log_then_crash_once)):
            await eventually(rig.settled, timeout=15)

    applied = [line for line in lines if line["event"] == "applied"]
    assert len(attempts) >= 2
    assert sorted(line["event_id"] for line in applied) == sorted(e.id for e in envelopes)
    assert all(line["attempt"] > 1 for line in applied)  # nothing from the attempt that failed
    assert await rig.effects() == {e.id: 1 for e in envelopes}


async def test_an_undecodable_message_is_dead_lettered_without_blocking_the_others(
    rig: Rig,
) -> None:
    before, after = _envelope(0), _envelope(1)
    poison = b"\x00 not an envelope {"
    await rig.publish(before, poison, after, msg_ids=["m1", "m2", "m3"])

    async with rig.running(rig.consumer()):
        await eventually(rig.settled)

    assert await rig.effects() == {before.id: 1, after.id: 1}
    [letter] = await rig.dead_letters()
    assert letter["consumer"] == rig.spec.durable
    assert letter["event_id"] is None
    assert bytes(letter["body"]) == poison
    assert letter["subject"] == rig.names.subject("happened", "0")
    assert "undecodable" in letter["error"]


async def test_an_event_that_keeps_failing_is_dead_lettered_after_max_attempts_and_the_rest_apply(
    rig: Rig,
) -> None:
    good_1, bad, good_2 = _envelope(0), _envelope(1, bad=True), _envelope(2)
    await rig.publish(good_1, bad, good_2)

    async def refuse_bad(conn: asyncpg.Connection, batch: list[Envelope]) -> None:
        await rig.record(conn, batch)
        if any(e.payload.get("bad") for e in batch):
            raise ValueError("this event can never be applied")

    bus = RecordingBus(rig.bus)
    async with rig.running(rig.consumer(refuse_bad, bus)):
        await eventually(rig.settled, timeout=20)

    assert await rig.effects() == {good_1.id: 1, good_2.id: 1}
    assert await rig.inbox() == {good_1.id, good_2.id}
    [letter] = await rig.dead_letters()
    assert letter["event_id"] == bad.id
    assert bytes(letter["body"]) == encode(bad)
    assert "ValueError" in letter["error"]
    deliveries_of_bad = sorted(d.num_delivered for d in bus.seen if d.data == encode(bad))
    assert deliveries_of_bad == list(range(1, MAX_FAILED_ATTEMPTS + 1))
    assert all(d.num_delivered == 1 for d in bus.seen if d.data != encode(bad))
    # The good events did not wait for the bad one to be given up on.
    applied_at = await rig.admin.fetchval(
        "SELECT max(processed_at) FROM inbox WHERE consumer = $1", rig.spec.durable
    )
    assert applied_at < letter["created_at"]
