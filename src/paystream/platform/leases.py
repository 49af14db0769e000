"""Partition leases in PostgreSQL: each partition of a consumer is owned by one copy at a time.

Every copy of a service is a *member* of each consumer it runs. Once a second a member
says it is alive, renews the partitions it holds, gives back what is above its fair
share (``ceil(partitions / live members)``) and claims free or expired partitions up to
that share. A claim raises the partition's *epoch*.

Fencing happens where the effects commit. A consumer's transaction first takes the
lease row ``FOR KEY SHARE`` and checks that owner and epoch are still its own and the
lease has not expired (`PartitionLease.fence`). So:

- a copy that lost the partition before its batch began commits nothing (`LeaseLost`);
- while a batch is committing nobody can take the partition: a claim takes the row
  ``FOR UPDATE SKIP LOCKED`` and passes it by. Renewal is a plain ``UPDATE``, which
  ``FOR KEY SHARE`` does not block, so a long batch does not cost its own lease.
- a copy frozen inside a transaction is cut off by the server's
  ``idle_in_transaction_session_timeout``, which rolls its work back and frees the row.

Why not the broker's own mechanism: NATS 2.11's pinned-client priority groups pin one
client per consumer but cannot stop a client that lost its pin from committing to our
database; only a check inside the same transaction can. nats-py (2.16) has no client
side for priority groups either.

Time is the database's (``now()``), so the copies' clocks do not have to agree. Each
member also keeps a local deadline, a margin short of the lease's end, and stops
fetching for a partition when it passes without a renewal.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from paystream.platform.errors import TransientError

LEASE_SECONDS = 6.0
# A member stops fetching this long before its lease ends, if it could not renew it.
SAFETY_MARGIN = 1.5


class LeaseLost(TransientError):
    """The partition is no longer this copy's: its work was not committed."""


def new_member_id(service: str) -> str:
    """A name for this process among the copies of ``service``."""
    return f"{service}-{uuid.uuid4().hex[:12]}"


@dataclass(slots=True)
class PartitionLease:
    """One partition held by this member, at one epoch."""

    consumer: str
    partition: int
    owner: str
    epoch: int
    valid_until: float  # local monotonic deadline; past it, stop fetching
    clock: Callable[[], float] = time.monotonic

    @property
    def valid(self) -> bool:
        return self.clock() < self.valid_until

    async def fence(self, conn: asyncpg.Connection) -> None:
        """Inside the consumer's transaction: go on only if the partition is still ours."""
        still_ours = await conn.fetchval(
            "SELECT 1 FROM partition_leases WHERE consumer = $1 AND partition = $2 "
            "AND owner = $3 AND epoch = $4 AND expires_at > clock_timestamp() FOR KEY SHARE",
            self.consumer, self.partition, self.owner, self.epoch,
        )
        if not still_ours:
            # Fetch nothing more on it until a renewal proves it ours again (same epoch).
            self.valid_until = float("-inf")
            raise LeaseLost(f"{self.consumer} partition {self.partition}: lease lost (epoch {self.epoch})")


@dataclass(frozen=True, slots=True)
class Round:
    """What one `PartitionLeases.tick` changed."""

    gained: list[PartitionLease]
    lost: list[int]  # taken by another member, or expired before it could be renewed
    surplus: list[int]  # held above the fair share: stop them, then `release`


class PartitionLeases:
    """The leases one member holds on the partitions of one consumer."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        consumer: str,
        partitions: int,
        member: str,
        lease_seconds: float = LEASE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self.consumer = consumer
        self.partitions = partitions
        self.member = member
        self._ttl = lease_seconds
        self._clock = clock
        self.held: dict[int, PartitionLease] = {}
        # Being given back: a round meanwhile must neither adopt them again (the database still
        # names us until the release commits) nor call them lost.
        self._releasing: set[int] = set()
        self.members = 0

    def _lease(self, partition: int, epoch: int, started: float) -> PartitionLease:
        return PartitionLease(
            self.consumer, partition, self.member, epoch,
            started + self._ttl - SAFETY_MARGIN, self._clock,
        )

    async def tick(self) -> Round:
        """One round: heartbeat, renew, find the surplus, claim up to the fair share."""
        started = self._clock()
        ttl = timedelta(seconds=self._ttl)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO partition_leases (consumer, partition) "
                "SELECT $1, generate_series(0, $2 - 1) ON CONFLICT DO NOTHING",
                self.consumer, self.partitions,
            )
            await conn.execute(
                "INSERT INTO consumer_members (consumer, member) VALUES ($1, $2) "
                "ON CONFLICT (consumer, member) DO UPDATE SET seen_at = now()",
                self.consumer, self.member,
            )
            await conn.execute(
                "DELETE FROM consumer_members WHERE consumer = $1 AND seen_at < now() - $2::interval * 10",
                self.consumer, ttl,
            )
            self.members = int(await conn.fetchval(
                "SELECT count(*) FROM consumer_members WHERE consumer = $1 AND seen_at > now() - $2::interval",
                self.consumer, ttl,
            ))
            renewed = await conn.fetch(
                "UPDATE partition_leases SET expires_at = now() + $3::interval "
                "WHERE consumer = $1 AND owner = $2 AND partition < $4 RETURNING partition, epoch",
                self.consumer, self.member, ttl, self.partitions,
            )
            kept = {row["partition"]: row["epoch"] for row in renewed}
            gained: list[PartitionLease] = []
            lost = [p for p, lease in self.held.items()
                    if kept.get(p) != lease.epoch and p not in self._releasing]
            for partition in lost:
                del self.held[partition]
            for partition, epoch in kept.items():
                if partition in self._releasing:
                    continue
                if partition in self.held:
                    self.held[partition].valid_until = started + self._ttl - SAFETY_MARGIN
                else:  # an earlier round committed but its answer was lost on the way
                    self.held[partition] = self._lease(partition, epoch, started)
                    gained.append(self.held[partition])
            share = math.ceil(self.partitions / max(1, self.members))
            surplus = sorted(self.held)[share:] if len(self.held) > share else []
            if len(self.held) < share:
                claimed = await conn.fetch(
                    "UPDATE partition_leases l SET owner = $2, epoch = l.epoch + 1, "
                    "expires_at = now() + $3::interval "
                    "FROM (SELECT consumer, partition FROM partition_leases "
                    "      WHERE consumer = $1 AND partition < $5 "
                    "      AND (owner IS NULL OR expires_at < now()) "
                    "      ORDER BY partition LIMIT $4 FOR UPDATE SKIP LOCKED) free "
                    "WHERE l.consumer = free.consumer AND l.partition = free.partition "
                    "RETURNING l.partition, l.epoch",
                    self.consumer, self.member, ttl, share - len(self.held), self.partitions,
                )
                for row in claimed:
                    lease = self._lease(row["partition"], row["epoch"], started)
                    self.held[lease.partition] = lease
                    gained.append(lease)
        return Round(gained=gained, lost=lost, surplus=surplus)

    async def release(self, partitions: list[int]) -> None:
        """Give partitions back at once (their work is finished), so another member need not
        wait for the lease to expire."""
        leases = [self.held[p] for p in partitions if p in self.held and p not in self._releasing]
        if not leases:
            return
        giving = {lease.partition for lease in leases}
        self._releasing |= giving
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "UPDATE partition_leases SET owner = NULL, expires_at = '-infinity' "
                    "WHERE consumer = $1 AND owner = $2 "
                    "AND (partition, epoch) IN (SELECT * FROM unnest($3::int[], $4::bigint[]))",
                    self.consumer, self.member,
                    [lease.partition for lease in leases], [lease.epoch for lease in leases],
                )
        finally:
            # Given back, or (the update failed) left to expire: either way no longer ours to use.
            self._releasing -= giving
            for partition in giving:
                self.held.pop(partition, None)

    async def leave(self) -> None:
        """Release everything and stop counting as a member (a clean stop)."""
        await self.release(list(self.held))
        async with self._pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM consumer_members WHERE consumer = $1 AND member = $2",
                self.consumer, self.member,
            )
