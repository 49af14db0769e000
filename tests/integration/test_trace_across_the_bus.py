"""A trace crosses the bus: outbox row → relay → consumer, on real PostgreSQL (in-memory bus).

An event written to the outbox inside a span is published by the relay under a PRODUCER
span of that trace, and the consumer that applies it continues the same trace in its event
span; what the handler emits because of it carries that event span's traceparent. The
batch's SQL runs under the batch span, which links to the event's trace.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from paystream.contracts.envelope import Envelope, make_envelope
from paystream.contracts.events import FraudApproved, PaymentInitiated, PaymentOrder
from paystream.contracts.topology import ConsumerSpec, StreamSpec
from paystream.platform import tracing
from paystream.platform.consumer import EventConsumer
from paystream.platform.memory_bus import MemoryBus
from paystream.platform.outbox import Outbox, OutboxRelay

from ._support import fetch_n


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing("tests", endpoint=None, exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown_tracing()
        structlog.reset_defaults()


def _order(payment_id: str) -> PaymentOrder:
    return PaymentOrder(payment_id=payment_id, tenant_id="ten_1", kind="transfer", source_account_id="acc_1",
                        destination_account_id="acc_2", amount=100, currency="USD")


async def test_an_event_from_the_outbox_is_consumed_in_the_trace_that_wrote_it(
    spans: InMemorySpanExporter, make_schema: Any, uid: str,
) -> None:
    db = await make_schema("payments")
    bus = MemoryBus()
    stream = StreamSpec(name=f"S_{uid}", subjects=("payments.>",))
    spec = ConsumerSpec(durable=f"{uid}-fraud", service="tests", stream=stream.name,
                        filter_subjects=("payments.initiated.>",))
    await bus.ensure_topology([stream], [spec])
    outbox = Outbox(partitions=8)
    payment_id = f"pay_{uid}"

    with tracing._tracer().start_as_current_span("POST /v1/payments", kind=SpanKind.SERVER) as request:
        async with db.pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, [make_envelope(PaymentInitiated(order=_order(payment_id)),
                                                  partition_key="acc_1", correlation_id=payment_id)])
    assert await OutboxRelay(db.pool, bus, channel=f"{uid}_outbox").relay_once() == 1

    emitted: list[Envelope] = []

    async def handler(conn: asyncpg.Connection, envelopes: list[Envelope]) -> None:
        await conn.execute("SELECT 1")
        for envelope in envelopes:
            emitted.append(make_envelope(FraudApproved(order=_order(payment_id)), partition_key="acc_1",
                                         correlation_id=envelope.correlation_id, causation_id=envelope.id))

    consumer = EventConsumer(spec=spec, bus=bus, pool=db.pool, handler=handler, fetch_timeout=0.2)
    await consumer.process(await fetch_n(await bus.subscribe(spec), 1))

    finished = spans.get_finished_spans()
    trace_id = request.get_span_context().trace_id
    publish = next(s for s in finished if s.name == "publish payments.initiated")
    assert publish.kind is SpanKind.PRODUCER and publish.context.trace_id == trace_id
    process = next(s for s in finished if s.name == "process payments.initiated")
    assert process.context.trace_id == trace_id
    assert process.parent is not None and process.parent.span_id == request.get_span_context().span_id
    assert process.attributes is not None and process.attributes[tracing.PAYMENT_ID] == payment_id
    ctx = process.context
    assert [e.traceparent for e in emitted] == [
        f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    ]
    batch = next(s for s in finished if s.name == f"{spec.inbox} apply")
    assert batch.context.trace_id != trace_id
    assert [link.context.span_id for link in batch.links] == [request.get_span_context().span_id]
    # The inbox insert and the handler's query are asyncpg spans under the batch span.
    queries = [s for s in finished if s.parent is not None and s.parent.span_id == batch.context.span_id]
    assert len(queries) >= 2 and all(s.kind is SpanKind.CLIENT for s in queries)
    assert any("inbox" in (s.attributes or {}).get("db.statement", "") for s in queries)  # type: ignore[operator]
