"""The bus on NATS JetStream: file-backed streams, durable pull consumers, de-duplication by id."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from paystream.contracts.topology import ConsumerSpec, StreamSpec
from paystream.platform.bus import ConsumerState, Delivery, OutgoingMessage
from paystream.platform.errors import TransientError
from paystream.platform.observability import get_logger

log = get_logger(__name__)

DUPLICATE_WINDOW_SECONDS = 300.0
ACK_WAIT_SECONDS = 30.0
MAX_AGE_SECONDS = 30 * 24 * 3600.0
# nats-server's default ceiling on one atomic batch (jetstream.limits.batch.max_msgs).
ATOMIC_BATCH_MAX = 1000
ERR_BATCH_DUPLICATE_ID = 10201  # "atomic publish batch contains duplicate message id"
ERR_ATOMIC_DISABLED = 10174  # the stream was made without allow_atomic

_NATS_ERRORS = (
    nats.errors.Error,
    nats.js.errors.Error,
    asyncio.TimeoutError,
    TimeoutError,
    ConnectionError,
    OSError,
)


def _consumer_config(consumer: ConsumerSpec, *, start_after: int | None = None) -> ConsumerConfig:
    """A durable pull consumer; ``start_after`` a stream sequence to begin after, else all."""
    start: dict[str, Any] = {"deliver_policy": DeliverPolicy.ALL}
    if start_after:
        start = {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": start_after + 1}
    return ConsumerConfig(
        durable_name=consumer.durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_SECONDS,
        max_deliver=-1,
        max_ack_pending=20_000,
        filter_subjects=list(consumer.filter_subjects),
        **start,
    )


class _NotAtomic(Exception):
    """An atomic batch the stream refused as a whole, for a reason one by one gets past."""

    def __init__(self, description: str, *, duplicate: bool) -> None:
        super().__init__(description)
        self.duplicate = duplicate


class NatsDelivery:
    """A JetStream message as a `Delivery`."""

    __slots__ = ("_msg",)

    def __init__(self, msg: Any) -> None:
        self._msg = msg

    @property
    def subject(self) -> str:
        return str(self._msg.subject)

    @property
    def data(self) -> bytes:
        return bytes(self._msg.data)

    @property
    def num_delivered(self) -> int:
        return int(self._msg.metadata.num_delivered)

    @property
    def delivery_seq(self) -> int:
        return int(self._msg.metadata.sequence.consumer)

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        await self._msg.nak(delay=delay)

    async def term(self) -> None:
        await self._msg.term()


class NatsSubscription:
    """A bound durable pull consumer."""

    def __init__(self, sub: Any, js: Any, spec: ConsumerSpec) -> None:
        self._sub = sub
        self._js = js
        self._spec = spec

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        # A lingering pull for ``batch`` messages returns only when the batch is full or the
        # request expires, which adds up to ``timeout`` of latency under light load. So:
        # wait for the first message, then take whatever else is already there (no_wait).
        try:
            msgs = await self._sub.fetch(batch=1, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except _NATS_ERRORS as exc:
            raise TransientError(f"fetch from {self._spec.durable} failed: {exc!r}") from exc
        if batch > 1:
            try:
                msgs += await self._sub.fetch(batch=batch - 1, timeout=0.02)
            except (TimeoutError, nats.errors.TimeoutError):
                pass
            except _NATS_ERRORS as exc:
                # The first message is in hand and will be processed; the rest come next time.
                log.warning("fetch_more_failed", consumer=self._spec.durable, error=repr(exc))
        return [NatsDelivery(m) for m in msgs]

    async def pending(self) -> int:
        try:
            info = await self._js.consumer_info(self._spec.stream, self._spec.durable, timeout=2)
        except _NATS_ERRORS as exc:
            raise TransientError(f"consumer info failed: {exc!r}") from exc
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def close(self) -> None:
        try:
            await self._sub.unsubscribe()
        except _NATS_ERRORS:
            pass


class NatsBus:
    """`Bus` on a JetStream connection. Build it with `connect`."""

    def __init__(self, nc: Any, *, timeout: float = 5.0, replicas: int = 1) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._timeout = timeout
        self._replicas = replicas
        self._subscriptions: list[Any] = []
        self._streams: dict[str, str] = {}  # subject -> the stream that captures it
        self._warned: set[str] = set()

    @classmethod
    async def connect(
        cls, url: str, *, name: str = "paystream", timeout: float = 5.0, replicas: int = 1
    ) -> NatsBus:
        async def on_error(exc: Exception) -> None:
            log.warning("nats_error", error=repr(exc))

        async def on_disconnect() -> None:
            log.warning("nats_disconnected")

        async def on_reconnect() -> None:
            log.info("nats_reconnected")

        try:
            nc = await nats.connect(
                [u.strip() for u in url.split(",") if u.strip()],  # every node of a cluster
                name=name,
                connect_timeout=timeout,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                pending_size=64 * 1024 * 1024,
            )
        except _NATS_ERRORS as exc:
            raise TransientError(f"cannot reach NATS at {url}: {exc!r}") from exc
        return cls(nc, timeout=timeout, replicas=replicas)

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> int:
        # Messages pipelined one by one could be stored out of order when a publish fails:
        # written into the socket of a NATS node that dies, the first few are lost, while
        # the rest wait in the client's reconnect buffer and are stored on the next node, so
        # the retry puts the lost ones behind them. A consumer would then apply one account's
        # events out of order. Each stream's share of the batch goes as one atomic batch
        # instead (nats-server >= 2.12): stored whole, in order, or not at all.
        if not messages:
            return 0
        by_stream: dict[str, list[OutgoingMessage]] = {}
        for message in messages:
            by_stream.setdefault(await self._stream_of(message.subject), []).append(message)
        results = await asyncio.gather(
            *(self._publish_in_order(stream, batch) for stream, batch in by_stream.items()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sum(r for r in results if isinstance(r, int))

    async def _stream_of(self, subject: str) -> str:
        stream = self._streams.get(subject)
        if stream is None:
            try:
                stream = await self._js.find_stream_name_by_subject(subject)
            except nats.js.errors.NotFoundError as exc:
                raise TransientError(f"no stream captures {subject}") from exc
            except _NATS_ERRORS as exc:
                raise TransientError(f"cannot find the stream of {subject}: {exc!r}") from exc
            self._streams[subject] = stream
        return stream

    async def _publish_in_order(self, stream: str, messages: Sequence[OutgoingMessage]) -> int:
        """One stream's messages, in order: atomic batches, each after the one before it."""
        stored = 0
        for start in range(0, len(messages), ATOMIC_BATCH_MAX):
            chunk = messages[start:start + ATOMIC_BATCH_MAX]
            try:
                stored += await self._publish_atomic(chunk)
            except _NotAtomic as exc:
                # Some of the chunk is stored already (a retry after a lost answer), or the
                # stream takes no batches: one at a time, each waiting for the one before.
                if not exc.duplicate and stream not in self._warned:
                    self._warned.add(stream)  # once: `paystream migrate` turns batches on
                    log.warning("atomic_publish_refused", stream=stream, error=str(exc))
                stored += await self._publish_one_by_one(chunk)
        return stored

    async def _publish_atomic(self, messages: Sequence[OutgoingMessage]) -> int:
        if len(messages) == 1:
            return await self._publish_one_by_one(messages)
        batch_id = uuid.uuid4().hex
        last = len(messages)
        try:
            for k, m in enumerate(messages[:-1], start=1):
                await self._nc.publish(m.subject, m.data, headers={
                    "Nats-Msg-Id": m.msg_id, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(k),
                })
            m = messages[-1]
            reply = await self._nc.request(m.subject, m.data, timeout=self._timeout, headers={
                "Nats-Msg-Id": m.msg_id, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(last),
                "Nats-Batch-Commit": "1",
            })
            answer = json.loads(reply.data)
        except (*_NATS_ERRORS, ValueError) as exc:
            raise TransientError(f"publish of {last} messages failed: {exc!r}") from exc
        error = answer.get("error") if isinstance(answer, dict) else {"description": repr(answer)}
        if error:
            code = int(error.get("err_code") or 0)
            if code in (ERR_BATCH_DUPLICATE_ID, ERR_ATOMIC_DISABLED):
                raise _NotAtomic(str(error.get("description")), duplicate=code == ERR_BATCH_DUPLICATE_ID)
            raise TransientError(f"publish of {last} messages refused: {error}")
        return int(answer.get("count") or last)

    async def _publish_one_by_one(self, messages: Sequence[OutgoingMessage]) -> int:
        stored = 0
        try:
            for m in messages:
                ack = await self._js.publish(m.subject, m.data, timeout=self._timeout,
                                             headers={"Nats-Msg-Id": m.msg_id})
                stored += 0 if ack.duplicate else 1
        except _NATS_ERRORS as exc:
            raise TransientError(f"publish of {len(messages)} messages failed: {exc!r}") from exc
        return stored

    async def subscribe(self, consumer: ConsumerSpec) -> NatsSubscription:
        try:
            sub = await self._js.pull_subscribe_bind(
                durable=consumer.durable, stream=consumer.stream, pending_msgs_limit=100_000
            )
        except _NATS_ERRORS as exc:
            raise TransientError(f"cannot bind consumer {consumer.durable}: {exc!r}") from exc
        self._subscriptions.append(sub)
        return NatsSubscription(sub, self._js, consumer)

    async def consumer_state(self, consumer: ConsumerSpec) -> ConsumerState:
        try:
            info = await self._js.consumer_info(consumer.stream, consumer.durable, timeout=2)
        except _NATS_ERRORS as exc:
            raise TransientError(f"consumer info of {consumer.durable} failed: {exc!r}") from exc
        # A nak-ed message waiting for its delay counts as in flight too: the new owner of a
        # partition then resets the durable, which is harmless.
        in_flight = int(info.num_ack_pending or 0)
        return ConsumerState(pending=int(info.num_pending or 0) + in_flight, in_flight=in_flight)

    async def redeliver_in_flight(self, consumer: ConsumerSpec) -> None:
        # JetStream cannot take messages back from the client that fetched them before
        # ack_wait. A consumer reset (ADR-60, nats-server >= 2.14) rewinds the durable in
        # place to one above its ack floor: what follows the floor comes again in stream
        # order (the inbox drops what was applied), and the durable never stops existing,
        # so a process killed in the middle loses nothing.
        try:
            await self._js.reset_consumer(consumer.stream, consumer.durable, timeout=2)
        except (nats.errors.NoRespondersError, nats.js.errors.APIError) as exc:
            if isinstance(exc, nats.js.errors.NotFoundError):
                raise TransientError(f"cannot reset {consumer.durable}: {exc!r}") from exc
            log.warning("consumer_reset_unsupported", consumer=consumer.durable, error=repr(exc))
            await self._remake(consumer)
            return
        except _NATS_ERRORS as exc:
            raise TransientError(f"cannot reset {consumer.durable}: {exc!r}") from exc
        log.warning("consumer_reset", consumer=consumer.durable)

    async def _remake(self, consumer: ConsumerSpec) -> None:
        """A server without the reset API: make the durable again after its ack floor. A
        process killed between the delete and the add leaves no durable until the stack's
        provisioning (``paystream up``, ``paystream migrate``) runs again."""
        try:
            info = await self._js.consumer_info(consumer.stream, consumer.durable, timeout=2)
            floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
            await self._js.delete_consumer(consumer.stream, consumer.durable)
            await self._js.add_consumer(consumer.stream, _consumer_config(consumer, start_after=floor))
        except _NATS_ERRORS as exc:
            raise TransientError(f"cannot remake {consumer.durable}: {exc!r}") from exc
        log.warning("consumer_remade", consumer=consumer.durable, after_seq=floor)

    async def ensure_topology(
        self, streams: Sequence[StreamSpec], consumers: Sequence[ConsumerSpec]
    ) -> None:
        try:
            for stream in streams:
                config = StreamConfig(
                    name=stream.name,
                    subjects=list(stream.subjects),
                    storage=StorageType.FILE,
                    retention=RetentionPolicy.LIMITS,
                    discard=DiscardPolicy.OLD,
                    duplicate_window=DUPLICATE_WINDOW_SECONDS,
                    max_age=MAX_AGE_SECONDS,
                    num_replicas=self._replicas,
                    allow_atomic=True,  # see publish
                )
                try:
                    await self._js.stream_info(stream.name)
                    await self._js.update_stream(config)
                except nats.js.errors.NotFoundError:
                    await self._js.add_stream(config)
            replaced: set[tuple[str, str]] = set()
            for consumer in consumers:
                try:
                    await self._js.consumer_info(consumer.stream, consumer.durable)
                    continue
                except nats.js.errors.NotFoundError:
                    pass
                start_after = None
                if consumer.replaces is not None:
                    # A home from before partitioned durables: go on where the old one stood.
                    try:
                        old = await self._js.consumer_info(consumer.stream, consumer.replaces)
                        start_after = int(old.ack_floor.stream_seq or 0) if old.ack_floor else 0
                        replaced.add((consumer.stream, consumer.replaces))
                    except nats.js.errors.NotFoundError:
                        pass
                await self._js.add_consumer(consumer.stream, _consumer_config(consumer, start_after=start_after))
            for stream_name, durable in replaced:
                await self._js.delete_consumer(stream_name, durable)
                log.info("consumer_replaced", consumer=durable)
        except _NATS_ERRORS as exc:
            raise TransientError(f"cannot provision streams: {exc!r}") from exc

    async def delete_consumer(self, consumer: ConsumerSpec) -> None:
        """Remove a durable (used to replay a stream from its start)."""
        try:
            await self._js.delete_consumer(consumer.stream, consumer.durable)
        except nats.js.errors.NotFoundError:
            return
        except _NATS_ERRORS as exc:
            raise TransientError(f"cannot delete consumer {consumer.durable}: {exc!r}") from exc

    async def close(self) -> None:
        # Pull subscriptions first: nats-py's fetch takes messages off a subscription's queue
        # without `task_done`, so draining one waits for `drain_timeout` (30 s) for nothing.
        # Whatever they fetched was settled before close; unacked messages are redelivered.
        for sub in self._subscriptions:
            try:
                await sub.unsubscribe()
            except _NATS_ERRORS:
                pass
        self._subscriptions.clear()
        try:
            await self._nc.drain()
        except _NATS_ERRORS:
            await self._nc.close()
