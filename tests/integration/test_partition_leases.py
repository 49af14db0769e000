"""Partition leases on real PostgreSQL and partitioned consumers on real JetStream: a fair share
per copy, rebalancing when a copy stops or dies, fencing, and one key's events kept in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from paystream.contracts.envelope import Envelope, encode, partition_of
from paystream.contracts.topology import partition_consumer
from paystream.platform.bus import OutgoingMessage
from paystream.platform.consumer import PartitionedConsumer
from paystream.platform.db import create_pool
from paystream.platform.leases import LeaseLost, PartitionLeases
from tests.integration._support import eventually

PARTITIONS = 8


@pytest.fixture
async def schema(make_schema: Any) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    db = await make_schema("payments")  # every messaging schema has the lease tables
    await db.pool.execute(
        "CREATE TABLE effects (seq bigserial PRIMARY KEY, event_id text NOT NULL, "
        "key text NOT NULL, n integer NOT NULL, partition integer NOT NULL)"
    )
    pool = await create_pool(db.role_url, min_size=1, max_size=8, application_name="paystream-tests")
    try:
        yield pool, db.pool
    finally:
        await pool.close()


def _leases(pool: asyncpg.Pool, member: str, lease_seconds: float = 6.0) -> PartitionLeases:
    return PartitionLeases(
        pool, consumer="c", partitions=PARTITIONS, member=member, lease_seconds=lease_seconds
    )


async def _expire(admin: asyncpg.Pool, member: str) -> None:
    await admin.execute(
        "UPDATE partition_leases SET expires_at = now() - interval '1 second' WHERE owner = $1", member
    )


async def test_two_members_share_the_partitions_and_one_takes_all_when_the_other_leaves(
    schema: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    pool, _ = schema
    a, b = _leases(pool, "a"), _leases(pool, "b")
    first = await a.tick()
    assert sorted(lease.partition for lease in first.gained) == list(range(PARTITIONS))
    await b.tick()  # b joins: a now holds more than its share
    round_a = await a.tick()
    assert round_a.surplus == [4, 5, 6, 7]
    await a.release(round_a.surplus)
    round_b = await b.tick()
    assert sorted(lease.partition for lease in round_b.gained) == [4, 5, 6, 7]
    assert sorted(a.held) == [0, 1, 2, 3] and sorted(b.held) == [4, 5, 6, 7]

    await b.leave()
    await a.tick()
    assert sorted(a.held) == list(range(PARTITIONS))


async def test_a_dead_members_partitions_are_taken_once_its_lease_expires(
    schema: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    pool, admin = schema
    a, b = _leases(pool, "a"), _leases(pool, "b")
    await a.tick()
    before = {lease.partition: lease.epoch for lease in a.held.values()}
    assert not (await b.tick()).gained  # all taken, and not expired
    await _expire(admin, "a")  # a stopped renewing (it died)
    await admin.execute("UPDATE consumer_members SET seen_at = now() - interval '1 hour' WHERE member = 'a'")
    taken = await b.tick()
    assert sorted(lease.partition for lease in taken.gained) == list(range(PARTITIONS))
    assert all(lease.epoch == before[lease.partition] + 1 for lease in taken.gained)
    lost = await a.tick()  # a comes back: its leases are gone
    assert sorted(lost.lost) == list(range(PARTITIONS))


async def test_a_copy_that_lost_its_lease_cannot_commit(schema: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    pool, admin = schema
    a, b = _leases(pool, "a"), _leases(pool, "b")
    await a.tick()
    stale = a.held[0]
    await _expire(admin, "a")
    await admin.execute("DELETE FROM consumer_members WHERE member = 'a'")
    assert 0 in {lease.partition for lease in (await b.tick()).gained}

    async with pool.acquire() as conn:
        with pytest.raises(LeaseLost):
            async with conn.transaction():
                await stale.fence(conn)
                await conn.execute(
                    "INSERT INTO effects (event_id, key, n, partition) VALUES ('late', 'k', 1, 0)"
                )
    assert await admin.fetchval("SELECT count(*) FROM effects") == 0
    async with pool.acquire() as conn, conn.transaction():
        await b.held[0].fence(conn)  # the new owner may


async def test_nobody_takes_a_partition_while_its_owner_commits_and_renewal_is_not_blocked(
    schema: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    pool, admin = schema
    a, b = _leases(pool, "a"), _leases(pool, "b")
    await a.tick()
    lease = a.held[0]
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await lease.fence(conn)  # a batch of partition 0 is being applied
        await a.tick()  # a renews meanwhile (a plain UPDATE: FOR KEY SHARE does not block it)
        await _expire(admin, "a")
        await admin.execute("DELETE FROM consumer_members WHERE member = 'a'")
        claimed = {g.partition for g in (await b.tick()).gained}
        assert 0 not in claimed and claimed == set(range(1, PARTITIONS))
        await tx.commit()
    assert 0 in {g.partition for g in (await b.tick()).gained}


async def test_a_round_during_a_release_does_not_adopt_the_partition_again(make_schema: Any) -> None:
    # A copy hands a partition over while its own lease round runs: the round's renewal still
    # sees the partition as ours (the release has not committed), and used to adopt it again,
    # starting a worker on a lease the release then gave away. That worker, fenced, could
    # still fetch and hand back messages around the new owner's, out of order (found by
    # test_copies_share_a_consumer_and_a_stopping_copy_hands_over_in_order under load).
    db = await make_schema("payments")
    single = await create_pool(db.role_url, min_size=1, max_size=1)
    try:
        a = PartitionLeases(single, consumer="c", partitions=PARTITIONS, member="a")
        await a.tick()
        async with single.acquire():  # both wait for the one connection: the round first
            round_ = asyncio.create_task(a.tick())
            await asyncio.sleep(0.05)
            release = asyncio.create_task(a.release([4]))
            await asyncio.sleep(0.05)
        result, _ = await asyncio.gather(round_, release)
        assert 4 not in {lease.partition for lease in result.gained}
        assert 4 not in a.held and result.lost == []
        rows = {r["partition"]: (r["owner"], r["epoch"]) for r in await db.pool.fetch(
            "SELECT partition, owner, epoch FROM partition_leases WHERE consumer = 'c'")}
        assert rows[4][0] is None
        assert all(rows[p] == ("a", lease.epoch) for p, lease in a.held.items())
    finally:
        await single.close()


# ------------------------------------------------------------------ partitioned consumers


def _envelope(key: str, n: int) -> Envelope:
    return Envelope(
        id=f"evt-{key}-{n}", type="tests.happened", version=1, occurred_at=datetime.now(UTC),
        correlation_id=key, causation_id=None, partition_key=key, payload={"key": key, "n": n},
    )


async def _publish(nats_bus: Any, names: Any, envelopes: list[Envelope]) -> None:
    await nats_bus.publish([
        OutgoingMessage(names.subject("happened", str(partition_of(e.partition_key, PARTITIONS))),
                        encode(e), e.id)
        for e in envelopes
    ])


def _recorder(copy: str) -> Any:
    async def record(conn: asyncpg.Connection, envelopes: list[Envelope]) -> None:
        await conn.executemany(
            "INSERT INTO effects (event_id, key, n, partition) VALUES ($1, $2, $3, $4)",
            [(e.id, e.payload["key"], e.payload["n"], partition_of(e.partition_key, PARTITIONS))
             for e in envelopes],
        )
        await asyncio.sleep(0.01)  # a batch takes a little while, so copies overlap

    return record


@contextlib.asynccontextmanager
async def _running(consumer: PartitionedConsumer) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def _check_applied_once_in_order(admin: asyncpg.Pool, keys: int, per_key: int) -> None:
    rows = await admin.fetch("SELECT key, n, event_id FROM effects ORDER BY seq")
    ids = [row["event_id"] for row in rows]
    assert len(ids) == len(set(ids)) == keys * per_key, "every event applied exactly once"
    seen: dict[str, list[int]] = {}
    for row in rows:
        seen.setdefault(row["key"], []).append(row["n"])
    assert all(ns == list(range(per_key)) for ns in seen.values()), "one key's events in order"


async def test_copies_share_a_consumer_and_a_stopping_copy_hands_over_in_order(
    schema: tuple[asyncpg.Pool, asyncpg.Pool], nats_bus: Any, bus_names: Any
) -> None:
    pool, admin = schema
    logical = bus_names.consumer("group")
    await nats_bus.ensure_topology(
        [bus_names.stream], [partition_consumer(logical, k) for k in range(PARTITIONS)]
    )

    def copy(member: str) -> PartitionedConsumer:
        return PartitionedConsumer(
            spec=logical, bus=nats_bus, pool=pool, handler=_recorder(member),
            partitions=PARTITIONS, member=member, batch=16, tick_seconds=0.2,
        )

    keys, per_key = 20, 30
    one, two = copy("one"), copy("two")
    async with _running(one):
        async with _running(two):
            await eventually(lambda: _split(one, two), timeout=20)
            for n in range(per_key // 2):
                await _publish(nats_bus, bus_names, [_envelope(f"acct{k}", n) for k in range(keys)])
            # `two` stops mid-stream (its batch in hand finished, its partitions released)
        for n in range(per_key // 2, per_key):
            await _publish(nats_bus, bus_names, [_envelope(f"acct{k}", n) for k in range(keys)])
        await eventually(lambda: admin.fetchval("SELECT count(*) = $1 FROM effects", keys * per_key),
                         timeout=30)
        assert one.partitions_held == list(range(PARTITIONS))
    await _check_applied_once_in_order(admin, keys, per_key)


async def _split(one: PartitionedConsumer, two: PartitionedConsumer) -> bool:
    return (
        len(one.partitions_held) == len(two.partitions_held) == PARTITIONS // 2
        and one.bound and two.bound
    )


async def test_a_new_owner_gets_what_a_dead_owner_fetched_and_never_settled_in_order(
    schema: tuple[asyncpg.Pool, asyncpg.Pool], nats_bus: Any, bus_names: Any
) -> None:
    pool, admin = schema
    logical = bus_names.consumer("group")
    parts = [partition_consumer(logical, k) for k in range(PARTITIONS)]
    await nats_bus.ensure_topology([bus_names.stream], parts)
    keys, per_key = 8, 10
    for n in range(per_key):
        await _publish(nats_bus, bus_names, [_envelope(f"acct{k}", n) for k in range(keys)])
    # A copy that died holding messages: it fetched from every partition and settled nothing.
    dead = [await nats_bus.subscribe(spec) for spec in parts]
    held = [await sub.fetch(3, timeout=2) for sub in dead]
    assert sum(len(h) for h in held) > 0
    heir = PartitionedConsumer(
        spec=logical, bus=nats_bus, pool=pool, handler=_recorder("heir"),
        partitions=PARTITIONS, member="heir", tick_seconds=0.2,
    )
    async with _running(heir):  # well before JetStream's own ack_wait (30 s) would redeliver
        await eventually(lambda: admin.fetchval("SELECT count(*) = $1 FROM effects", keys * per_key),
                         timeout=15)
    await _check_applied_once_in_order(admin, keys, per_key)
    for sub in dead:
        await sub.close()


async def test_a_delivery_the_owner_never_received_comes_again_before_newer_events(
    schema: tuple[asyncpg.Pool, asyncpg.Pool], nats_bus: Any, bus_names: Any
) -> None:
    # A fetch's answer lost on the way (the NATS node it came through died mid-run), seen from
    # the owner: the durable delivered a message that never arrived, and JetStream would send it
    # again only after ack_wait (30 s), behind newer events. Here another subscriber on the
    # same durable takes that message and sits on it. The owner sees the jump in the durable's
    # delivery sequence and starts over, so the key's events still apply in order.
    pool, admin = schema
    logical = bus_names.consumer("group")
    parts = [partition_consumer(logical, k) for k in range(PARTITIONS)]
    await nats_bus.ensure_topology([bus_names.stream], parts)
    key = "acct-gap"
    spec = parts[partition_of(key, PARTITIONS)]
    owner = PartitionedConsumer(
        spec=logical, bus=nats_bus, pool=pool, handler=_recorder("owner"),
        partitions=PARTITIONS, member="owner", tick_seconds=0.2, batch=2,
    )
    async with _running(owner):
        await _publish(nats_bus, bus_names, [_envelope(key, n) for n in range(5)])
        await eventually(lambda: admin.fetchval("SELECT count(*) = 5 FROM effects"), timeout=15)
        thief = await nats_bus.subscribe(spec)
        stolen = asyncio.create_task(thief.fetch(1, timeout=5))
        await asyncio.sleep(0.2)  # its pull waits beside the owner's
        for n in range(5, 30):
            await _publish(nats_bus, bus_names, [_envelope(key, n)])
            await asyncio.sleep(0.02)
        assert len(await stolen) == 1
        await eventually(lambda: admin.fetchval("SELECT count(*) = 30 FROM effects"), timeout=20)
        await thief.close()
    await _check_applied_once_in_order(admin, 1, 30)
