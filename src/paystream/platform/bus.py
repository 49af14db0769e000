"""The event bus port: publish batches with de-duplication ids, pull batches from durables.

Two adapters implement it: `paystream.platform.nats_bus` (NATS JetStream, the real
one) and `paystream.platform.memory_bus` (an in-memory fake for domain tests). Both
pass the same contract tests in ``tests/integration/test_bus_contract.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from paystream.contracts.topology import ConsumerSpec, StreamSpec


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to publish; ``msg_id`` is the broker's de-duplication id."""

    subject: str
    data: bytes
    msg_id: str


class Delivery(Protocol):
    """One delivered message, to be settled exactly once by ack, nak or term."""

    @property
    def subject(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def num_delivered(self) -> int: ...
    @property
    def delivery_seq(self) -> int:
        """The durable's own count of deliveries, this one included (redeliveries too): a jump
        between two fetches means something was delivered that this subscriber never saw."""
        ...
    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...
    async def term(self) -> None: ...


class Subscription(Protocol):
    """A bound durable pull consumer."""

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        """Up to ``batch`` messages; an empty list when none came within ``timeout``."""
        ...

    async def pending(self) -> int:
        """Messages not yet acknowledged (the consumer's lag)."""
        ...

    async def close(self) -> None:
        """Stop pulling; what was fetched and not settled is redelivered later."""
        ...


@dataclass(frozen=True, slots=True)
class ConsumerState:
    """Where a durable stands: ``pending`` not yet delivered or not yet acknowledged,
    ``in_flight`` delivered and not yet settled (by whoever fetched it)."""

    pending: int
    in_flight: int


class Bus(Protocol):
    """Publish and subscribe. Errors surface as `TransientError`."""

    async def publish(self, messages: Sequence[OutgoingMessage]) -> int:
        """Publish all messages and wait for the broker to store each one.

        Returns how many the broker stored as new (the rest were duplicates).
        Raises `TransientError` if any could not be confirmed: the caller retries
        the whole batch, and de-duplication ids make that harmless. A failed batch
        never leaves a message of a stream stored ahead of an earlier one of the
        same stream that was not: consumers rely on a stream's order.
        """
        ...

    async def subscribe(self, consumer: ConsumerSpec) -> Subscription: ...

    async def consumer_state(self, consumer: ConsumerSpec) -> ConsumerState: ...

    async def redeliver_in_flight(self, consumer: ConsumerSpec) -> None:
        """Make every delivered, unsettled message of ``consumer`` due again now, in stream
        order: a partition's new owner calls it when the old owner died holding messages."""
        ...

    async def ensure_topology(
        self, streams: Sequence[StreamSpec], consumers: Sequence[ConsumerSpec]
    ) -> None:
        """Create streams and durable consumers that do not exist yet."""
        ...

    async def close(self) -> None: ...
