"""The consumer runtime: apply a batch of events and record them in the inbox in ONE transaction.

Delivery is at least once; effects happen once. For each fetched batch:

1. decode every message; one that does not parse is poison: dead-letter row + ``term``;
2. in one transaction, insert the batch's event ids into ``inbox`` (``ON CONFLICT DO
   NOTHING``) and hand only the ids that were new to the handler, in delivery order;
3. commit, then ``ack`` every message of the batch.

Errors are mapped mechanically: a transient error (lost connection, deadlock, timeout)
``nak``s the batch with a growing delay; any other error re-runs the batch one message
at a time so a single bad message cannot hold the others back, and a message that keeps
failing that way is dead-lettered and terminated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import msgspec

from paystream.contracts.envelope import Envelope, decode
from paystream.contracts.topology import ConsumerSpec
from paystream.platform.bus import Bus, Delivery, Subscription
from paystream.platform.db import is_transient
from paystream.platform.errors import PoisonMessage
from paystream.platform.observability import Metrics, get_logger, held_until_commit

log = get_logger(__name__)

Handler = Callable[[asyncpg.Connection, list[Envelope]], Awaitable[None]]

# A message that fails with a non-transient error this many times goes to the DLQ.
MAX_FAILED_ATTEMPTS = 5


def _backoff(attempt: int) -> float:
    return float(min(30.0, 0.25 * 2 ** max(0, attempt - 1)))


class EventConsumer:
    """Runs one durable consumer for a service: fetch, apply in one transaction, ack."""

    def __init__(
        self,
        *,
        spec: ConsumerSpec,
        bus: Bus,
        pool: asyncpg.Pool,
        handler: Handler,
        metrics: Metrics | None = None,
        batch: int = 256,
        fetch_timeout: float = 1.0,
    ) -> None:
        self.spec = spec
        self._bus = bus
        self._pool = pool
        self._handler = handler
        self._metrics = metrics
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._subscription: Subscription | None = None
        self.busy = False
        self.bound = False

    @property
    def name(self) -> str:
        return self.spec.durable

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set; the batch in hand is always finished first."""
        attempt = 0
        last_lag = 0.0
        while not stopping.is_set():
            try:
                if self._subscription is None:
                    self._subscription = await self._bus.subscribe(self.spec)
                    self.bound = True
                    log.info("consumer_bound", consumer=self.name)
                deliveries = await self._subscription.fetch(self._batch, self._fetch_timeout)
                attempt = 0
            except Exception as exc:
                attempt += 1
                log.warning("consumer_fetch_failed", consumer=self.name, error=repr(exc))
                await asyncio.sleep(_backoff(attempt))
                continue
            if deliveries:
                self.busy = True
                try:
                    await self.process(deliveries)
                except Exception as exc:
                    # Nothing unsettled is lost: the broker redelivers after ack_wait and the
                    # inbox makes that harmless. The consumer itself must keep running.
                    attempt += 1
                    log.error("consumer_batch_failed", consumer=self.name, error=repr(exc))
                    await asyncio.sleep(_backoff(attempt))
                finally:
                    self.busy = False
            now = time.monotonic()
            if self._metrics and now - last_lag > 5.0:
                last_lag = now
                try:
                    self._metrics.consumer_lag.labels(self.name).set(
                        await self._subscription.pending()
                    )
                except Exception as exc:
                    log.warning("consumer_lag_failed", consumer=self.name, error=repr(exc))

    async def process(self, deliveries: Sequence[Delivery]) -> None:
        """Apply and settle one batch (public so tests can drive it directly)."""
        started = time.perf_counter()
        items: list[tuple[Delivery, Envelope]] = []
        for delivery in deliveries:
            try:
                items.append((delivery, decode(delivery.data)))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await self._dead_letter(delivery, None, PoisonMessage(f"undecodable: {exc}"))
        if not items:
            return
        try:
            await self._apply([envelope for _, envelope in items])
        except Exception as exc:
            if is_transient(exc):
                log.warning("consumer_batch_retry", consumer=self.name, error=repr(exc))
                await self._settle(items, "retried", nak=True)
                return
            log.warning("consumer_batch_split", consumer=self.name, error=repr(exc))
            await self._one_by_one(items)
            return
        await self._settle(items, "applied")
        if self._metrics:
            self._metrics.batch_seconds.labels(self.name).observe(time.perf_counter() - started)

    async def _one_by_one(self, items: list[tuple[Delivery, Envelope]]) -> None:
        for delivery, envelope in items:
            try:
                await self._apply([envelope])
            except Exception as exc:
                if is_transient(exc) or (
                    not isinstance(exc, PoisonMessage)
                    and delivery.num_delivered < MAX_FAILED_ATTEMPTS
                ):
                    log.warning(
                        "consumer_event_retry",
                        consumer=self.name,
                        event_id=envelope.id,
                        attempt=delivery.num_delivered,
                        error=repr(exc),
                    )
                    await self._settle([(delivery, envelope)], "retried", nak=True)
                else:
                    await self._dead_letter(delivery, envelope, exc)
                continue
            await self._settle([(delivery, envelope)], "applied")

    async def _apply(self, envelopes: list[Envelope]) -> None:
        unique: dict[str, Envelope] = {}
        for envelope in envelopes:
            unique.setdefault(envelope.id, envelope)
        # The handlers' lines about what the batch did are written once it has committed.
        with held_until_commit():
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    "INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::text[]) "
                    "ON CONFLICT DO NOTHING RETURNING event_id",
                    self.name,
                    list(unique),
                )
                new_ids = {row["event_id"] for row in rows}
                fresh = [envelope for event_id, envelope in unique.items() if event_id in new_ids]
                if fresh:
                    await self._handler(conn, fresh)
        duplicates = len(envelopes) - len(fresh)
        if duplicates and self._metrics:
            self._metrics.events_consumed.labels(self.name, "duplicate").inc(duplicates)

    async def _settle(
        self, items: Sequence[tuple[Delivery, Envelope]], outcome: str, *, nak: bool = False
    ) -> None:
        for delivery, _ in items:
            try:
                if nak:
                    await delivery.nak(delay=_backoff(delivery.num_delivered))
                else:
                    await delivery.ack()
            except Exception as exc:
                # The broker will redeliver; the inbox makes that harmless.
                log.warning("consumer_settle_failed", consumer=self.name, error=repr(exc))
        if self._metrics:
            self._metrics.events_consumed.labels(self.name, outcome).inc(len(items))

    async def _settle_one(self, delivery: Delivery, how: str) -> None:
        try:
            if how == "term":
                await delivery.term()
            else:
                await delivery.nak(delay=_backoff(delivery.num_delivered))
        except Exception as exc:
            # Redelivered later: dead-lettered again (a second row), never lost.
            log.warning("consumer_settle_failed", consumer=self.name, error=repr(exc))

    async def _dead_letter(
        self, delivery: Delivery, envelope: Envelope | None, error: BaseException
    ) -> None:
        log.error(
            "consumer_dead_letter",
            consumer=self.name,
            subject=delivery.subject,
            event_id=envelope.id if envelope else None,
            error=repr(error),
        )
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO dead_letters (consumer, event_id, subject, body, error) "
                    "VALUES ($1, $2, $3, $4, $5)",
                    self.name,
                    envelope.id if envelope else None,
                    delivery.subject,
                    delivery.data,
                    repr(error)[:2000],
                )
        except Exception as exc:
            # Cannot record it: leave it on the bus to come back rather than lose it.
            log.warning("dead_letter_write_failed", consumer=self.name, error=repr(exc))
            await self._settle_one(delivery, "nak")
            return
        await self._settle_one(delivery, "term")
        if self._metrics:
            self._metrics.dead_letters.labels(self.name).inc()
            self._metrics.events_consumed.labels(self.name, "dead_lettered").inc()
