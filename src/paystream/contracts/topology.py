"""The bus topology: which streams hold which events, and who reads what.

`paystream up` (and any deployment tool) provisions exactly this; publishers and
consumers look their names up here so the three never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSpec:
    """A JetStream stream and the subjects it captures."""

    name: str
    subjects: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerSpec:
    """A durable pull consumer: one per (reading service, stream)."""

    durable: str
    service: str
    stream: str
    filter_subjects: tuple[str, ...]


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(name="PAYMENTS", subjects=("payments.>", "payment.>")),
    StreamSpec(name="FRAUD", subjects=("fraud.>",)),
    StreamSpec(name="LEDGER", subjects=("ledger.>",)),
)

CONSUMERS: tuple[ConsumerSpec, ...] = (
    ConsumerSpec(
        durable="fraud", service="fraud", stream="PAYMENTS",
        filter_subjects=("payments.initiated.>",),
    ),
    ConsumerSpec(
        durable="ledger", service="ledger", stream="FRAUD",
        filter_subjects=("fraud.>",),
    ),
    ConsumerSpec(
        durable="payments-fraud", service="payments", stream="FRAUD",
        filter_subjects=("fraud.>",),
    ),
    ConsumerSpec(
        durable="payments-ledger", service="payments", stream="LEDGER",
        filter_subjects=("ledger.>",),
    ),
    ConsumerSpec(
        durable="notifications", service="notifications", stream="PAYMENTS",
        filter_subjects=("payment.>",),
    ),
)


def consumers_of(service: str) -> tuple[ConsumerSpec, ...]:
    """The durable consumers a service reads from."""
    return tuple(c for c in CONSUMERS if c.service == service)
