"""The bus topology: which streams hold which events, and who reads what.

`paystream up` (and any deployment tool) provisions exactly this; publishers and
consumers look their names up here so the three never drift apart.

Each logical consumer (``fraud``, ``ledger`` …) is provisioned as one JetStream durable
per partition (``fraud-p0`` … ``fraud-p7``), so a partition can be owned by exactly one
copy of the service at a time (see `paystream.platform.leases`). The inbox keeps the
logical name, so a partition changing hands never makes an event look new.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every service of paystream, each its own process (`paystream serve NAME`), in start order.
SERVICES: tuple[str, ...] = ("gateway", "payments", "fraud", "ledger", "notifications")


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
    # The logical consumer a partition's durable belongs to (its inbox name), and the
    # durable it takes over from in a home made before partitions had durables of their own.
    group: str | None = None
    replaces: str | None = None

    @property
    def inbox(self) -> str:
        return self.group or self.durable


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


# An event's subject is ``<domain>.<name>.<partition>``: the type has two tokens.
TYPE_TOKENS = 2


def partition_consumer(spec: ConsumerSpec, partition: int) -> ConsumerSpec:
    """The durable that carries ``partition`` of the logical consumer ``spec``.

    A filter's ``>`` stands for the rest of the type and the partition token; here the
    partition token is pinned (``fraud.>`` becomes ``fraud.*.3``).
    """
    filters = []
    for pattern in spec.filter_subjects:
        tokens = pattern.split(".")
        if tokens[-1] != ">":
            raise ValueError(f"filter {pattern!r} of {spec.durable} must end in '>'")
        prefix = tokens[:-1]
        filters.append(".".join([*prefix, *["*"] * (TYPE_TOKENS - len(prefix)), str(partition)]))
    return ConsumerSpec(
        durable=f"{spec.durable}-p{partition}", service=spec.service, stream=spec.stream,
        filter_subjects=tuple(filters), group=spec.durable, replaces=spec.durable,
    )


def partitioned_consumers(partitions: int) -> tuple[ConsumerSpec, ...]:
    """Every durable to provision: one per logical consumer and partition."""
    return tuple(partition_consumer(spec, k) for spec in CONSUMERS for k in range(partitions))


def consumers_of(service: str) -> tuple[ConsumerSpec, ...]:
    """The durable consumers a service reads from."""
    return tuple(c for c in CONSUMERS if c.service == service)
