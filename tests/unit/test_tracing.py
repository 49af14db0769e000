"""Traces: off costs nothing; on, envelopes carry the trace and consumers continue it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from paystream.contracts.envelope import Envelope, decode, encode, make_envelope
from paystream.contracts.events import FraudApproved, PaymentInitiated, PaymentOrder, payment_id_of
from paystream.platform import tracing
from paystream.platform.observability import configure_logging, get_logger


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every span kept in memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing("tests", endpoint=None, exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown_tracing()
        structlog.reset_defaults()


def _order(payment_id: str = "pay_1") -> PaymentOrder:
    return PaymentOrder(payment_id=payment_id, tenant_id="ten_1", kind="transfer", source_account_id="acc_1",
                        destination_account_id="acc_2", amount=100, currency="USD")


def _initiated(payment_id: str, traceparent: str | None) -> Envelope:
    envelope = make_envelope(PaymentInitiated(order=_order(payment_id)), partition_key="acc_1",
                             correlation_id=payment_id)
    return Envelope(**{**{f: getattr(envelope, f) for f in envelope.__struct_fields__}, "traceparent": traceparent})


def test_without_an_endpoint_the_sdk_is_never_loaded_and_no_exporter_thread_runs() -> None:
    # A fresh interpreter: this test process may have loaded the SDK for other tests.
    script = textwrap.dedent("""
        import json, sys, threading
        from paystream.platform import tracing
        from paystream.platform.config import load_settings
        from paystream.contracts.envelope import encode, make_envelope
        from paystream.contracts.events import PaymentInitiated, PaymentOrder
        settings = load_settings()
        on = tracing.configure_tracing("payments", endpoint=settings.tracing_endpoint)
        order = PaymentOrder(payment_id="pay_1", tenant_id="t", kind="transfer", source_account_id="a",
                             destination_account_id="b", amount=1, currency="USD")
        envelope = make_envelope(PaymentInitiated(order=order), partition_key="a", correlation_id="c")
        print(json.dumps({
            "on": on,
            "sdk": sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")),
            "instrumentation": sorted(m for m in sys.modules if m.startswith("opentelemetry.instrumentation")),
            "threads": sorted(t.name for t in threading.enumerate()),
            "traceparent": envelope.traceparent,
            "encoded_has_traceparent": b"traceparent" in encode(envelope),
            "provider": type(__import__("opentelemetry.trace").trace.get_tracer_provider()).__name__,
        }))
    """)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    seen = json.loads(result.stdout)
    assert seen["on"] is False
    assert seen["sdk"] == []
    assert seen["instrumentation"] == []
    assert seen["threads"] == ["MainThread"]
    assert seen["traceparent"] is None
    assert seen["encoded_has_traceparent"] is False
    assert seen["provider"] == "ProxyTracerProvider"


def test_the_otlp_endpoint_setting_comes_from_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from paystream.platform.config import load_settings

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert load_settings().tracing_endpoint == "http://collector:4318"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert load_settings().tracing_endpoint is None


def test_an_envelope_made_inside_a_span_carries_its_traceparent_through_encoding(
    spans: InMemorySpanExporter,
) -> None:
    with tracing._tracer().start_as_current_span("request") as span:
        envelope = make_envelope(PaymentInitiated(order=_order()), partition_key="acc_1", correlation_id="pay_1")
    ctx = span.get_span_context()
    assert envelope.traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    assert decode(encode(envelope)).traceparent == envelope.traceparent


def test_an_envelope_made_outside_any_span_carries_none(spans: InMemorySpanExporter) -> None:
    envelope = make_envelope(PaymentInitiated(order=_order()), partition_key="acc_1", correlation_id="pay_1")
    assert envelope.traceparent is None


def test_a_consumed_batch_continues_each_events_trace_and_links_the_batch(spans: InMemorySpanExporter) -> None:
    tracer = tracing._tracer()
    with tracer.start_as_current_span("payment one") as one:
        pass
    with tracer.start_as_current_span("payment two") as two:
        pass
    first = _initiated("pay_1", tracing.format_traceparent(one.get_span_context()))
    second = _initiated("pay_2", tracing.format_traceparent(two.get_span_context()))

    with tracing.consuming("fraud", [first, second], payment_id_of):
        # What the handler emits for each event: caused by it, so in its trace.
        caused = [
            make_envelope(FraudApproved(order=_order(e.payload["order"]["payment_id"])), partition_key="acc_1",
                          correlation_id=e.correlation_id, causation_id=e.id)
            for e in (first, second)
        ]
        batch_ctx = trace.get_current_span().get_span_context()

    finished = {s.name: s for s in spans.get_finished_spans() if s.name != "payment one"}
    processes = [s for s in spans.get_finished_spans() if s.name == "process payments.initiated"]
    assert len(processes) == 2
    by_payment = {s.attributes[tracing.PAYMENT_ID]: s for s in processes}  # type: ignore[index]
    for payment, parent in (("pay_1", one), ("pay_2", two)):
        span = by_payment[payment]
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
        assert span.context.trace_id == parent.get_span_context().trace_id
        assert [link.context.span_id for link in span.links] == [batch_ctx.span_id]
    batch = finished["fraud apply"]
    assert batch.parent is None  # a trace of its own
    assert {link.context.trace_id for link in batch.links} == {
        one.get_span_context().trace_id, two.get_span_context().trace_id,
    }
    for envelope, payment in zip(caused, ("pay_1", "pay_2"), strict=True):
        ctx = by_payment[payment].context
        assert envelope.traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def test_log_lines_carry_the_trace_and_span_of_their_span(spans: InMemorySpanExporter) -> None:
    out = io.StringIO()
    configure_logging("tests", stream=out, trace_ids=True)
    log = get_logger("tests")
    log.info("outside")
    with tracing._tracer().start_as_current_span("work") as span:
        log.info("inside")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    ctx = span.get_span_context()
    assert "trace_id" not in lines[0] and "span_id" not in lines[0]
    assert lines[1]["trace_id"] == f"{ctx.trace_id:032x}"
    assert lines[1]["span_id"] == f"{ctx.span_id:016x}"


def test_a_log_line_in_a_batch_names_the_span_of_its_payment(spans: InMemorySpanExporter) -> None:
    out = io.StringIO()
    configure_logging("tests", stream=out, trace_ids=True)
    log = get_logger("tests")
    with tracing._tracer().start_as_current_span("payment") as upstream:
        pass
    event = _initiated("pay_9", tracing.format_traceparent(upstream.get_span_context()))
    with tracing.consuming("fraud", [event], payment_id_of):
        log.info("fraud_decision", payment_id="pay_9")
    line = json.loads(out.getvalue().splitlines()[-1])
    process = next(s for s in spans.get_finished_spans() if s.name == "process payments.initiated")
    assert line["trace_id"] == f"{upstream.get_span_context().trace_id:032x}"
    assert line["span_id"] == f"{process.context.span_id:016x}"


def test_a_webhook_send_continues_the_trace_of_its_delivery_row(spans: InMemorySpanExporter) -> None:
    with tracing._tracer().start_as_current_span("notifications event") as upstream:
        traceparent = tracing.traceparent_for(None)
    with tracing.continued(traceparent, "webhook send", kind=SpanKind.CLIENT, attributes={"a": "b"}):
        pass
    send = next(s for s in spans.get_finished_spans() if s.name == "webhook send")
    assert send.context.trace_id == upstream.get_span_context().trace_id
    assert send.parent is not None and send.parent.span_id == upstream.get_span_context().span_id


def test_an_orphan_client_span_is_not_sampled_but_a_root_server_span_is(spans: InMemorySpanExporter) -> None:
    tracer = tracing._tracer()
    with tracer.start_as_current_span("SELECT poll", kind=SpanKind.CLIENT) as orphan:
        pass
    with tracer.start_as_current_span("GET /v1/payments", kind=SpanKind.SERVER):
        with tracer.start_as_current_span("SELECT payment", kind=SpanKind.CLIENT):
            pass
    assert not orphan.is_recording()
    assert sorted(s.name for s in spans.get_finished_spans()) == ["GET /v1/payments", "SELECT payment"]


def test_payment_id_of_reads_every_event_shape() -> None:
    def envelope(payload: dict[str, object]) -> Envelope:
        return Envelope(id="evt_1", type="t", version=1, occurred_at=datetime.now(UTC), correlation_id="c",
                        causation_id=None, partition_key="k", payload=payload)

    assert payment_id_of(envelope({"order": {"payment_id": "pay_1"}})) == "pay_1"
    assert payment_id_of(envelope({"payment_id": "pay_2", "tenant_id": "t"})) == "pay_2"
    assert payment_id_of(envelope({"tenant_id": "t", "data": {"id": "pay_3"}})) == "pay_3"
    assert payment_id_of(envelope({"n": 1})) is None


def test_a_trace_not_sampled_where_it_starts_is_not_recorded_downstream_either() -> None:
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing("tests", endpoint=None, exporter=exporter, sample_ratio=0.0)
    try:
        with tracing._tracer().start_as_current_span("POST /v1/payments", kind=SpanKind.SERVER) as request:
            envelope = make_envelope(PaymentInitiated(order=_order()), partition_key="acc_1", correlation_id="pay_1")
        with tracing.consuming("fraud", [envelope], payment_id_of):
            caused = make_envelope(FraudApproved(order=_order()), partition_key="acc_1", correlation_id="pay_1",
                                   causation_id=envelope.id)
    finally:
        tracing.shutdown_tracing()
    assert not request.is_recording()
    assert envelope.traceparent is not None
    assert int(envelope.traceparent.rsplit("-", 1)[1], 16) & 1 == 0  # carried, its sampled flag off
    assert caused.traceparent is not None and caused.traceparent.split("-")[1] == envelope.traceparent.split("-")[1]
    # Only the batch span, a root of its own, was up to the ratio too: nothing at all was kept.
    assert exporter.get_finished_spans() == ()
