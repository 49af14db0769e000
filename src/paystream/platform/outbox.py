"""Transactional outbox: events commit with the state change, a relay publishes them.

`Outbox.add` writes envelopes inside the caller's transaction. `OutboxRelay` wakes on
LISTEN/NOTIFY (with a short poll as a backstop), takes the oldest batch of rows,
publishes them with the event id as the broker's de-duplication id, and deletes them
only once the broker has confirmed every one.

With several copies of a service, one relay at a time moves the outbox: a batch is taken
under a transaction-scoped advisory lock named after the outbox, and a copy that does not
get it skips the round. Two relays side by side could otherwise publish a later batch
before an earlier one, and one account's events would reach the bus out of order. The
relay is not the bottleneck (a round moves up to ``batch_size`` rows in one publish).

An envelope carries its trace's ``traceparent`` inside the row's body, so the trace is
committed with the state change; with tracing on, the relay adds a PRODUCER span per event
under it (`paystream.platform.tracing.publishing`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from paystream.contracts.envelope import Envelope, encode, subject_for
from paystream.platform import tracing
from paystream.platform.bus import Bus, OutgoingMessage
from paystream.platform.db import Listener, is_transient
from paystream.platform.errors import TransientError
from paystream.platform.observability import Metrics, get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class OutboxRows:
    """Envelopes as the ``outbox`` table's columns, for a statement that inserts them itself."""

    event_ids: list[str]
    subjects: list[str]
    bodies: list[bytes]


class Outbox:
    """Writes events into the service's ``outbox`` table, in the caller's transaction."""

    def __init__(self, partitions: int) -> None:
        self._partitions = partitions

    def subject(self, envelope: Envelope) -> str:
        return subject_for(envelope, self._partitions)

    def rows(self, envelopes: Sequence[Envelope]) -> OutboxRows:
        """The rows `add` would insert, for a caller that writes them with its own statement
        (the ledger writes a batch and its events in one round trip)."""
        return OutboxRows(
            [e.id for e in envelopes], [self.subject(e) for e in envelopes], [encode(e) for e in envelopes]
        )

    async def add(self, conn: asyncpg.Connection, envelopes: Sequence[Envelope]) -> None:
        if not envelopes:
            return
        rows = self.rows(envelopes)
        await conn.execute(
            "INSERT INTO outbox (event_id, subject, body) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])",
            rows.event_ids, rows.subjects, rows.bodies,
        )


class OutboxRelay:
    """Moves committed outbox rows to the bus, in batches, at least once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: Bus,
        *,
        channel: str,
        metrics: Metrics | None = None,
        batch_size: int = 1000,
        poll_interval: float = 0.5,
        duplicate_delivery: bool = False,
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._channel = channel
        self._metrics = metrics
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._duplicate = duplicate_delivery
        self._wakeup = asyncio.Event()
        self._listener = Listener(pool, channel, self._notified, name="outbox")

    async def relay_once(self) -> int:
        """Publish one batch; returns how many rows it moved (0 when the outbox is empty)."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1))", self._channel):
                return 0  # another copy is relaying
            rows = await conn.fetch(
                "SELECT seq, event_id, subject, body FROM outbox ORDER BY seq LIMIT $1",
                self._batch_size,
            )
            if not rows:
                return 0
            messages = []
            for row in rows:
                messages.append(OutgoingMessage(row["subject"], bytes(row["body"]), row["event_id"]))
                if self._duplicate:
                    messages.append(
                        OutgoingMessage(row["subject"], bytes(row["body"]), row["event_id"] + "-dup")
                    )
            if tracing.enabled():
                with tracing.publishing([(r["subject"], r["event_id"], bytes(r["body"])) for r in rows]):
                    await self._bus.publish(messages)
            else:
                await self._bus.publish(messages)
            await conn.execute(
                "DELETE FROM outbox WHERE seq = ANY($1::bigint[])", [row["seq"] for row in rows]
            )
        if self._metrics:
            self._metrics.outbox_published.inc(len(rows))
        return len(rows)

    async def backlog(self) -> int:
        async with self._pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM outbox"))

    def _notified(self, *_: object) -> None:
        self._wakeup.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Relay until ``stopping`` is set, then flush what is left (drain)."""
        failures = 0
        last_backlog = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._listener.ensure()  # never raises: without it, the poll moves events
                self._wakeup.clear()
                try:
                    moved = await self.relay_once()
                    failures = 0
                except Exception as exc:
                    if not is_transient(exc) and not isinstance(exc, TransientError):
                        log.exception("outbox_relay_error")
                    else:
                        log.warning("outbox_relay_retry", error=repr(exc))
                    failures += 1
                    moved = 0
                    if stopping.is_set() and failures > 3:
                        log.error("outbox_relay_gave_up_on_stop", error=repr(exc))
                        return
                    await asyncio.sleep(min(5.0, 0.1 * 2**failures))
                    continue
                if self._metrics and loop.time() - last_backlog > 5.0:
                    last_backlog = loop.time()
                    try:
                        self._metrics.outbox_backlog.set(await self.backlog())
                    except Exception as exc:
                        log.warning("outbox_backlog_failed", error=repr(exc))
                if moved >= self._batch_size:
                    continue
                if stopping.is_set():
                    return
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=self._poll_interval)
                except TimeoutError:
                    pass
        finally:
            await self._listener.close()
