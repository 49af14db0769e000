"""The versioned envelope every event travels in, and its wire encoding.

An event is published on subject ``<type>.<partition>``, where the partition is derived
from the envelope's partition key (an account id), so one account's events share a
partition and keep their order.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from paystream.contracts.ids import new_id


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One event: who/what/when plus its typed payload (as plain data).

    ``traceparent`` is the W3C trace context of the span that caused the event (None, and
    left out of the JSON, when tracing is off): a consumer continues that trace.
    """

    id: str
    type: str
    version: int
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None
    partition_key: str
    payload: dict[str, Any]
    traceparent: str | None = None


def _no_trace(causation_id: str | None) -> str | None:
    return None


# Where a new envelope's ``traceparent`` comes from: nothing until `paystream.platform.tracing`
# is imported, which puts its own here (contracts import nothing of platform's).
trace_source: Callable[[str | None], str | None] = _no_trace

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
    """Wrap a typed event (see `paystream.contracts.events`) in a new envelope; it carries the
    trace of its cause's event span (or of the current span) when tracing is on."""
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
        traceparent=trace_source(causation_id),
    )
