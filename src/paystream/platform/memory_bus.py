"""An in-memory `Bus` for domain tests: streams, de-duplication, durables, redelivery.

It keeps the semantics the services rely on (at-least-once delivery, ack/nak/term,
de-duplication by message id, per-consumer filters) and nothing else. It passes the
same contract tests as the JetStream adapter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from paystream.contracts.topology import ConsumerSpec, StreamSpec
from paystream.platform.bus import ConsumerState, Delivery, OutgoingMessage
from paystream.platform.errors import TransientError


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` is one or more trailing tokens."""
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == ">":  # noqa: S105 - a name, not a secret
            return len(subject_tokens) > index
        if index >= len(subject_tokens):
            return False
        if token != "*" and token != subject_tokens[index]:  # noqa: S105 - a name, not a secret
            return False
    return len(pattern_tokens) == len(subject_tokens)


@dataclass
class _Stored:
    seq: int
    subject: str
    data: bytes


@dataclass
class _Stream:
    spec: StreamSpec
    messages: list[_Stored] = field(default_factory=list)
    seen_ids: set[str] = field(default_factory=set)


@dataclass
class _Consumer:
    spec: ConsumerSpec
    cursor: int = 0  # index into the stream's messages of the next new one
    redeliver: list[tuple[float, int]] = field(default_factory=list)  # (not before, seq)
    deliveries: dict[int, int] = field(default_factory=dict)  # seq -> times delivered
    unacked: set[int] = field(default_factory=set)
    delivered: int = 0  # deliveries made, redeliveries included


class MemoryDelivery:
    __slots__ = ("_bus", "_consumer", "_delivery_seq", "_num_delivered", "_settled", "_stored")

    def __init__(self, bus: MemoryBus, consumer: _Consumer, stored: _Stored) -> None:
        self._bus = bus
        self._consumer = consumer
        self._stored = stored
        self._settled = False
        # Fixed at delivery time, as a broker's delivery metadata is.
        self._num_delivered = consumer.deliveries[stored.seq]
        consumer.delivered += 1
        self._delivery_seq = consumer.delivered

    @property
    def subject(self) -> str:
        return self._stored.subject

    @property
    def data(self) -> bytes:
        return self._stored.data

    @property
    def num_delivered(self) -> int:
        return self._num_delivered

    @property
    def delivery_seq(self) -> int:
        return self._delivery_seq

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        self._consumer.unacked.discard(self._stored.seq)
        return True

    async def ack(self) -> None:
        self._settle()

    async def term(self) -> None:
        self._settle()

    async def nak(self, delay: float | None = None) -> None:
        if self._settle():
            self._consumer.unacked.add(self._stored.seq)
            not_before = time.monotonic() + (delay or 0.0)
            self._consumer.redeliver.append((not_before, self._stored.seq))
            self._bus._wake()


class MemorySubscription:
    def __init__(self, bus: MemoryBus, consumer: _Consumer) -> None:
        self._bus = bus
        self._consumer = consumer

    def _take(self, batch: int) -> list[Delivery]:
        consumer = self._consumer
        stream = self._bus._streams[consumer.spec.stream]
        out: list[Delivery] = []
        now = time.monotonic()
        due = sorted(item for item in consumer.redeliver if item[0] <= now)
        for item in due[:batch]:
            consumer.redeliver.remove(item)
            stored = stream.messages[item[1] - 1]
            consumer.deliveries[stored.seq] += 1
            out.append(MemoryDelivery(self._bus, consumer, stored))
        while len(out) < batch and consumer.cursor < len(stream.messages):
            stored = stream.messages[consumer.cursor]
            consumer.cursor += 1
            if not any(subject_matches(f, stored.subject) for f in consumer.spec.filter_subjects):
                continue
            consumer.deliveries[stored.seq] = 1
            consumer.unacked.add(stored.seq)
            out.append(MemoryDelivery(self._bus, consumer, stored))
        return out

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            got = self._take(batch)
            if got:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._bus._event.clear()
            try:
                await asyncio.wait_for(self._bus._event.wait(), timeout=min(remaining, 0.05))
            except TimeoutError:
                pass

    async def pending(self) -> int:
        stream = self._bus._streams[self._consumer.spec.stream]
        new = sum(
            1
            for stored in stream.messages[self._consumer.cursor :]
            if any(subject_matches(f, stored.subject) for f in self._consumer.spec.filter_subjects)
        )
        return new + len(self._consumer.unacked)

    async def close(self) -> None:
        return None


class MemoryBus:
    """The fake. ``fail_next_publish`` makes the next publish raise, as a broker outage would."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._consumers: dict[str, _Consumer] = {}
        self._event = asyncio.Event()
        self.fail_next_publish = False

    def _wake(self) -> None:
        self._event.set()

    def _stream_for(self, subject: str) -> _Stream | None:
        for stream in self._streams.values():
            if any(subject_matches(p, subject) for p in stream.spec.subjects):
                return stream
        return None

    async def publish(self, messages: Sequence[OutgoingMessage]) -> int:
        if self.fail_next_publish:
            self.fail_next_publish = False
            raise TransientError("memory bus: injected publish failure")
        stored = 0
        for message in messages:
            stream = self._stream_for(message.subject)
            if stream is None:
                raise TransientError(f"no stream for subject {message.subject}")
            if message.msg_id in stream.seen_ids:
                continue
            stream.seen_ids.add(message.msg_id)
            stream.messages.append(
                _Stored(len(stream.messages) + 1, message.subject, message.data)
            )
            stored += 1
        self._wake()
        return stored

    async def subscribe(self, consumer: ConsumerSpec) -> MemorySubscription:
        if consumer.durable not in self._consumers:
            raise TransientError(f"no consumer {consumer.durable}")
        return MemorySubscription(self, self._consumers[consumer.durable])

    async def ensure_topology(
        self, streams: Sequence[StreamSpec], consumers: Sequence[ConsumerSpec]
    ) -> None:
        for spec in streams:
            self._streams.setdefault(spec.name, _Stream(spec))
        for consumer in consumers:
            self._consumers.setdefault(consumer.durable, _Consumer(consumer))

    def _consumer(self, spec: ConsumerSpec) -> _Consumer:
        if spec.durable not in self._consumers:
            raise TransientError(f"no consumer {spec.durable}")
        return self._consumers[spec.durable]

    async def consumer_state(self, consumer: ConsumerSpec) -> ConsumerState:
        state = self._consumer(consumer)
        pending = await MemorySubscription(self, state).pending()
        return ConsumerState(pending=pending, in_flight=len(state.unacked))

    async def redeliver_in_flight(self, consumer: ConsumerSpec) -> None:
        state = self._consumer(consumer)
        state.redeliver = [(0.0, seq) for seq in sorted(state.unacked)]
        self._wake()

    async def delete_consumer(self, consumer: ConsumerSpec) -> None:
        self._consumers.pop(consumer.durable, None)

    async def close(self) -> None:
        return None
