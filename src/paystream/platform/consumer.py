"""The consumer runtime: apply a batch of events and record them in the inbox in ONE transaction.

Delivery is at least once; effects happen once. For each fetched batch:

1. decode every message; one that does not parse is poison: dead-letter row + ``term``;
2. in one transaction, insert the batch's event ids into ``inbox`` (``ON CONFLICT DO
   NOTHING``) and hand only the ids that were new to the handler, in delivery order;
3. commit, then ``ack`` every message of the batch.

With several copies of a service, each partition's durable is consumed by the copy that
holds its lease (`paystream.platform.leases`, run by `PartitionedConsumer`): the
transaction of step 2 begins with the lease's fence, so a copy that lost the partition
commits nothing and hands the batch back at once.

Errors are mapped mechanically: a transient error (lost connection, deadlock, timeout)
``nak``s the batch with a growing delay; any other error re-runs the batch one message
at a time so a single bad message cannot hold the others back, and a message that keeps
failing that way is dead-lettered and terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import msgspec

from paystream.contracts.envelope import Envelope, decode
from paystream.contracts.events import payment_id_of
from paystream.contracts.topology import ConsumerSpec, partition_consumer
from paystream.platform import tracing
from paystream.platform.bus import Bus, Delivery, Subscription
from paystream.platform.db import is_transient
from paystream.platform.errors import PoisonMessage
from paystream.platform.leases import LEASE_SECONDS, LeaseLost, PartitionLease, PartitionLeases
from paystream.platform.observability import Metrics, get_logger, held_until_commit

log = get_logger(__name__)

Handler = Callable[[asyncpg.Connection, list[Envelope]], Awaitable[None]]
Fence = Callable[[asyncpg.Connection], Awaitable[None]]

# A message that fails with a non-transient error this many times goes to the DLQ.
MAX_FAILED_ATTEMPTS = 5
# A batch that fails transiently is retried in place this many times, waiting at most the cap
# between tries (in all about 13 s: well inside the broker's 30 s ack_wait, so nothing is
# redelivered behind the consumer's back meanwhile); then it is handed back to the broker.
TRANSIENT_RETRIES = 6
TRANSIENT_BACKOFF_CAP = 5.0


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
        lease: PartitionLease | None = None,
    ) -> None:
        self.spec = spec
        self._bus = bus
        self._pool = pool
        self._handler = handler
        self._metrics = metrics
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._lease = lease
        self._subscription: Subscription | None = None
        self.busy = False
        self.bound = False
        self._handed_back = False
        self._last_seq = 0  # the last delivery_seq this run saw (0: none yet)

    @property
    def name(self) -> str:
        """The inbox name: the logical consumer, the same for each of its partitions."""
        return self.spec.inbox

    def _missed(self, deliveries: Sequence[Delivery]) -> bool:
        """True when deliveries were made between the last batch and this one that we never got."""
        expected = self._last_seq + 1
        self._last_seq = deliveries[-1].delivery_seq
        return expected > 1 and deliveries[0].delivery_seq != expected

    def _may_fetch(self) -> bool:
        return self._lease is None or self._lease.valid

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set; the batch in hand is always finished first."""
        attempt = 0
        self._handed_back = False
        self._last_seq = 0
        try:
            while not stopping.is_set():
                if self._handed_back and self._lease is not None:
                    # What went back must come again before anything newer, and the broker may
                    # serve a fetch before it has taken the naks in: the partition's owner
                    # starts over through its handover (PartitionedConsumer._take_over).
                    return
                if not self._may_fetch():
                    # The lease was not renewed in time: another copy may own the partition soon.
                    await asyncio.sleep(0.1)
                    continue
                try:
                    if self._subscription is None:
                        self._subscription = await self._bus.subscribe(self.spec)
                        self.bound = True
                        log.info("consumer_bound", consumer=self.spec.durable)
                    deliveries = await self._subscription.fetch(self._batch, self._fetch_timeout)
                    attempt = 0
                except Exception as exc:
                    attempt += 1
                    log.warning("consumer_fetch_failed", consumer=self.spec.durable, error=repr(exc))
                    await asyncio.sleep(_backoff(attempt))
                    continue
                if deliveries and not self._may_fetch():
                    await self._hand_back(deliveries)
                    continue
                if deliveries and self._lease is not None and self._missed(deliveries):
                    # Delivered to us and lost on the way (a fetch's answer, when the NATS node
                    # it came through died), or to a copy that no longer owns the partition: it
                    # would come again only after ack_wait, behind newer events. Start over.
                    log.warning("consumer_delivery_gap", consumer=self.spec.durable,
                                expected=self._last_seq + 1, got=deliveries[0].delivery_seq)
                    await self._hand_back(deliveries)
                    continue
                if deliveries:
                    attempt = await self._run_batch(deliveries, attempt)
        finally:
            if self._subscription is not None:
                with contextlib.suppress(Exception):
                    await self._subscription.close()
                self._subscription = None
                self.bound = False

    async def _run_batch(self, deliveries: Sequence[Delivery], attempt: int) -> int:
        """Process one batch; returns the failure count the fetch loop backs off by."""
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
        return attempt

    async def _hand_back(self, deliveries: Sequence[Delivery]) -> None:
        """Not ours to apply (the lease is gone or going): make them due again at once, so the
        partition's next owner gets them in order."""
        self._handed_back = True
        for delivery in deliveries:
            with contextlib.suppress(Exception):
                await delivery.nak(delay=0)

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
        if tracing.enabled():
            with tracing.consuming(self.name, [envelope for _, envelope in items], payment_id_of):
                await self._apply_and_settle(items, started)
        else:
            await self._apply_and_settle(items, started)

    async def _apply_and_settle(self, items: list[tuple[Delivery, Envelope]], started: float) -> None:
        try:
            await self._apply_in_place([envelope for _, envelope in items])
        except LeaseLost as exc:
            log.warning("consumer_fenced", consumer=self.spec.durable, error=str(exc))
            await self._hand_back([delivery for delivery, _ in items])
            return
        except Exception as exc:
            if is_transient(exc):
                log.warning("consumer_batch_handed_back", consumer=self.name, error=repr(exc))
                await self._hand_back([delivery for delivery, _ in items])
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
                await self._apply_in_place([envelope])
            except LeaseLost:
                await self._hand_back([d for d, _ in items[items.index((delivery, envelope)):]])
                return
            except Exception as exc:
                if is_transient(exc):
                    log.warning("consumer_batch_handed_back", consumer=self.name, event_id=envelope.id,
                                error=repr(exc))
                    await self._hand_back([d for d, _ in items[items.index((delivery, envelope)):]])
                    return
                if not isinstance(exc, PoisonMessage) and delivery.num_delivered < MAX_FAILED_ATTEMPTS:
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

    async def _apply_in_place(self, envelopes: list[Envelope]) -> None:
        """Apply; a transient failure (a lost connection, a deadlock, a timeout) is retried
        right here, holding the partition, so one key's events still apply in order. A nak
        let the next events overtake them: the broker serves a fetch before it has taken
        the naks in. Past TRANSIENT_RETRIES, or with the lease going, the error is raised."""
        for attempt in itertools.count(1):
            try:
                await self._apply(envelopes)
                return
            except LeaseLost:
                raise
            except Exception as exc:
                if not is_transient(exc) or attempt > TRANSIENT_RETRIES or not self._may_fetch():
                    raise
                log.warning("consumer_batch_retry", consumer=self.name, attempt=attempt, error=repr(exc))
                if self._metrics:
                    self._metrics.events_consumed.labels(self.name, "retried").inc(len(envelopes))
                await asyncio.sleep(min(TRANSIENT_BACKOFF_CAP, _backoff(attempt)))

    async def _apply(self, envelopes: list[Envelope]) -> None:
        unique: dict[str, Envelope] = {}
        for envelope in envelopes:
            unique.setdefault(envelope.id, envelope)
        # The handlers' lines about what the batch did are written once it has committed.
        with held_until_commit():
            async with self._pool.acquire() as conn, conn.transaction():
                if self._lease is not None:
                    await self._lease.fence(conn)
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


# How long a partition's new owner waits for messages its old owner fetched and never
# settled (a copy that died) before it makes them due again itself.
HANDOVER_GRACE_SECONDS = 3.0
LAG_REFRESH_SECONDS = 5.0


class PartitionedConsumer:
    """One logical consumer in one copy of a service: an `EventConsumer` for each partition
    this copy holds the lease of, started and stopped as leases come and go."""

    def __init__(
        self,
        *,
        spec: ConsumerSpec,
        bus: Bus,
        pool: asyncpg.Pool,
        handler: Handler,
        partitions: int,
        member: str,
        metrics: Metrics | None = None,
        batch: int = 256,
        tick_seconds: float = 1.0,
        lease_seconds: float = LEASE_SECONDS,
        lease_pool: asyncpg.Pool | None = None,
    ) -> None:
        self.spec = spec
        self._bus = bus
        self._pool = pool
        self._handler = handler
        self._metrics = metrics
        self._batch = batch
        self._tick = tick_seconds
        self._parts = [partition_consumer(spec, k) for k in range(partitions)]
        self.leases = PartitionLeases(
            lease_pool or pool, consumer=spec.durable, partitions=partitions, member=member,
            lease_seconds=lease_seconds,
        )
        self._workers: dict[int, tuple[EventConsumer, asyncio.Event, asyncio.Task[None]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._ticked = False

    @property
    def name(self) -> str:
        return self.spec.durable

    @property
    def bound(self) -> bool:
        """Leases taken at least once, and every partition held is being consumed."""
        return self._ticked and all(worker.bound for worker, _, _ in self._workers.values())

    @property
    def busy(self) -> bool:
        return any(worker.busy for worker, _, _ in self._workers.values())

    @property
    def partitions_held(self) -> list[int]:
        return sorted(self._workers)

    async def run(self, stopping: asyncio.Event) -> None:
        """Hold a fair share of the partitions until ``stopping``; then give them back."""
        last_lag = 0.0
        loop = asyncio.get_running_loop()
        try:
            while not stopping.is_set():
                try:
                    await self._round()
                except Exception as exc:
                    log.warning("lease_round_failed", consumer=self.name, error=repr(exc))
                if self._metrics and loop.time() - last_lag >= LAG_REFRESH_SECONDS:
                    last_lag = loop.time()
                    await self._report_lag()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=self._tick)
        finally:
            await self._stop(list(self._workers))
            if self._background:
                await asyncio.wait(self._background, timeout=45.0)
            try:
                await self.leases.leave()
            except Exception as exc:  # they expire by themselves
                log.warning("lease_leave_failed", consumer=self.name, error=repr(exc))

    async def _round(self) -> None:
        """Renew and rebalance. Nothing here waits on a batch or a handover, so a round always
        ends in time to renew the leases again."""
        changes = await self.leases.tick()
        self._ticked = True
        if changes.lost:
            log.warning("partitions_lost", consumer=self.name, partitions=changes.lost)
            for partition in changes.lost:
                self._stop_soon(partition)
        for partition in changes.surplus:
            self._hand_over(partition)
        for lease in changes.gained:
            self._start(lease)
        if changes.gained:
            log.info("partitions_taken", consumer=self.name, partitions=[g.partition for g in changes.gained],
                     members=self.leases.members)
        if self._metrics:
            self._metrics.partitions_held.labels(self.name).set(len(self._workers))

    def _start(self, lease: PartitionLease) -> None:
        spec = self._parts[lease.partition]
        worker = EventConsumer(
            spec=spec, bus=self._bus, pool=self._pool, handler=self._handler,
            metrics=self._metrics, batch=self._batch, lease=lease,
        )
        stop = asyncio.Event()

        async def consume() -> None:
            while not stop.is_set():
                if not lease.valid:  # fenced: until a renewal proves it ours, or we stop
                    await asyncio.sleep(0.2)
                    continue
                await self._take_over(spec, stop)
                if stop.is_set():
                    return
                # Returns before `stop` only after handing messages back (see EventConsumer.run).
                await worker.run(stop)

        self._workers[lease.partition] = (worker, stop, asyncio.create_task(consume()))

    def _stop_soon(self, partition: int) -> None:
        """The lease is gone: the worker stops after its batch (whose fence fails) on its own."""
        entry = self._workers.pop(partition, None)
        if entry is not None:
            entry[1].set()

    def _hand_over(self, partition: int) -> None:
        """Above the fair share: stop the worker, and give the lease back once its batch is done."""
        entry = self._workers.pop(partition, None)
        if entry is None:
            return
        _, stop, task = entry
        stop.set()

        async def release() -> None:
            await asyncio.wait([task], timeout=40.0)
            await self.leases.release([partition])
            log.info("partition_released", consumer=self.name, partition=partition)

        self._background.add(asyncio.create_task(release()))
        for done in [t for t in self._background if t.done()]:
            self._background.discard(done)

    async def _take_over(self, spec: ConsumerSpec, stop: asyncio.Event) -> None:
        """Wait until nobody holds unsettled messages of the partition, or make them due again:
        its events must be applied in their order, whoever fetched them before."""
        deadline = time.monotonic() + HANDOVER_GRACE_SECONDS
        while not stop.is_set():
            try:
                if not (await self._bus.consumer_state(spec)).in_flight:
                    return
                if time.monotonic() >= deadline:
                    await self._bus.redeliver_in_flight(spec)
                    return
            except Exception as exc:
                log.warning("handover_failed", consumer=spec.durable, error=repr(exc))
            await asyncio.sleep(0.2)

    async def _stop(self, partitions: list[int]) -> None:
        """Stop the workers of ``partitions``; each finishes the batch in hand first."""
        stopping = [self._workers.pop(p) for p in partitions if p in self._workers]
        for _, stop, _ in stopping:
            stop.set()
        tasks = [task for _, _, task in stopping]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=40.0)
            for task in pending:
                task.cancel()

    async def _report_lag(self) -> None:
        """The whole consumer's lag, every partition's, whoever holds them: each copy reports
        the same figure, so ``max`` over copies is the lag."""
        assert self._metrics is not None
        try:
            states = [await self._bus.consumer_state(spec) for spec in self._parts]
        except Exception as exc:
            log.warning("consumer_lag_failed", consumer=self.name, error=repr(exc))
            return
        self._metrics.consumer_lag.labels(self.name).set(sum(s.pending for s in states))
