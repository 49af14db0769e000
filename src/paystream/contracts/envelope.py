"""The versioned envelope every event travels in, and its wire encoding.

An event is published on subject ``<type>.<partition>``, where the partition is derived
from the envelope's partition key (an account id), so one account's events share a
partition and keep their order.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from typing import Any

import msgspec

from paystream.contracts.ids import new_id


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One event: who/what/when plus its typed payload (as plain data)."""

    id: str
    type: str
    version: int
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None
    partition_key: str
    payload: dict[str, Any]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def encode(envelope: Envelope) -> bytes:
    """The envelope as JSON bytes."""
    return _encoder.encode(envelope)


def decode(data: bytes) -> Envelope:
    """Parse JSON bytes into an envelope; raises `msgspec.DecodeError` or `ValidationError`."""
    return _decoder.decode(data)


def partition_of(key: str, partitions: int) -> int:
    """The partition a key belongs to: stable across processes and releases."""
    return zlib.crc32(key.encode()) % partitions


def subject_for(envelope: Envelope, partitions: int) -> str:
    """The bus subject the envelope is published on."""
    return f"{envelope.type}.{partition_of(envelope.partition_key, partitions)}"


def make_envelope(
    event: msgspec.Struct,
    *,
    partition_key: str,
    correlation_id: str,
    causation_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Envelope:
    """Wrap a typed event (see `paystream.contracts.events`) in a new envelope."""
    event_type, version = type(event).__event_type__  # type: ignore[attr-defined]
    return Envelope(
        id=new_id("evt"),
        type=event_type,
        version=version,
        occurred_at=occurred_at or datetime.now(UTC),
        correlation_id=correlation_id,
        causation_id=causation_id,
        partition_key=partition_key,
        payload=msgspec.to_builtins(event),
    )
