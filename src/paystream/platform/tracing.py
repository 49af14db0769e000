"""Traces: OpenTelemetry spans over HTTP, PostgreSQL, Redis, the bus and webhook sends.

Off unless the process is given an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): then `configure_tracing` installs the SDK's
tracer provider with a batch exporter over OTLP/HTTP, and instruments asyncpg, redis, the
FastAPI apps (`instrument_app`) and the internal aiohttp clients (`client_trace_configs`).
Off, nothing of the SDK is imported, no exporter thread runs, nothing is instrumented, and
every function here returns after one check of a module flag: the hot path pays nothing.

**Across the bus.** An event carries the W3C ``traceparent`` of the span that caused it in
its envelope (`paystream.contracts.envelope.make_envelope` asks `traceparent_for`), so it
is committed with the outbox row (inside the row's body) and published by the relay later.
A consumer applies a *batch* of events from many payments in one transaction, so
`consuming` gives each batch:

- one **batch span** (``<consumer> apply``), the root of a trace of its own: the inbox
  insert, the handler's SQL and the commit are its children, and it links to every event's
  context;
- one **event span** per event (``process <event type>``), whose *parent* is the event's
  traceparent and which links back to the batch span. It lasts as long as the batch, and
  it is what the events this event causes carry (found by their ``causation_id``), so one
  payment stays ONE trace from the gateway to the webhook.

Log lines inside a batch carry the ids of the event span their ``event_id`` or
``payment_id`` names (`add_trace_ids`), else of the current span.

Root spans of kind CLIENT (a query or Redis call outside any span: the relay's poll, lease
renewals, sweepers) are not sampled, so background loops do not flood the backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from paystream.contracts import envelope as _envelope_module

if TYPE_CHECKING:
    import aiohttp
    from fastapi import FastAPI

    from paystream.contracts.envelope import Envelope

TRACER_NAME = "paystream"
PAYMENT_ID = "paystream.payment_id"
# Routes polled by probes and scrapers: no spans for them.
EXCLUDED_URLS = "/healthz,/readyz,/metrics"

_propagator = TraceContextTextMapPropagator()


@dataclass(slots=True)
class _State:
    provider: Any
    tracer: trace.Tracer


_state: _State | None = None


def enabled() -> bool:
    """True when this process records and exports spans."""
    return _state is not None


def _tracer() -> trace.Tracer:
    assert _state is not None
    return _state.tracer


def configure_tracing(
    service: str, *, endpoint: str | None, instance: str | None = None, exporter: Any = None,
    sample_ratio: float = 1.0,
) -> bool:
    """Install the SDK and the instrumentations when ``endpoint`` is set; returns whether it did.

    The OTLP exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables itself (endpoint,
    headers, timeout), and the batch processor its ``OTEL_BSP_*`` ones (delay, queue size).
    An ``exporter`` given (a test's in-memory one) takes every span at once instead.
    ``sample_ratio`` of the traces that start here are kept (by trace id); a span whose parent
    came with a trace context follows the parent's decision, so a payment's trace is kept
    or dropped whole.
    """
    global _state
    if (not endpoint and exporter is None) or _state is not None:
        return _state is not None
    # Imported only here: a process without an endpoint never loads the SDK.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased

    resource = Resource.create({
        "service.name": f"paystream-{service}",
        "service.namespace": "paystream",
        "service.instance.id": instance or service,
    })
    provider = TracerProvider(resource=resource, sampler=ParentBased(root=_root_sampler(sample_ratio)))
    if exporter is None:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # For libraries that ask the global provider; paystream's own spans and the
        # instrumentations are given this one (the global can be set only once per process).
        trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument(tracer_provider=provider)
    _state = _State(provider=provider, tracer=provider.get_tracer(TRACER_NAME))
    return True


def _root_sampler(ratio: float = 1.0) -> Any:
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, TraceIdRatioBased

    by_ratio = TraceIdRatioBased(ratio)

    class NoOrphanClientSpans(Sampler):
        """Samples ``ratio`` of root spans, never a CLIENT call made outside any span."""

        def should_sample(
            self, parent_context: Any, trace_id: int, name: str, kind: SpanKind | None = None,
            attributes: Any = None, links: Any = None, trace_state: Any = None,
        ) -> SamplingResult:
            if kind is SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
            return by_ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"NoOrphanClientSpans{{{ratio}}}"

    return NoOrphanClientSpans()


def shutdown_tracing() -> None:
    """Export what is buffered and stop the exporter (blocks briefly); a no-op when off."""
    global _state
    if _state is None:
        return
    state, _state = _state, None
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().uninstrument()
    state.provider.shutdown()


def instrument_app(app: FastAPI) -> None:
    """Server spans for every route of ``app`` but the probes', continuing a caller's traceparent."""
    if _state is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=_state.provider, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"],
    )


def client_trace_configs() -> list[aiohttp.TraceConfig]:
    """For an internal aiohttp session: a client span per call, and the traceparent header sent."""
    if _state is None:
        return []
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config

    return [create_trace_config(tracer_provider=_state.provider)]


def format_traceparent(ctx: SpanContext) -> str:
    """The W3C ``traceparent`` of a span context."""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def parse_traceparent(value: str | None) -> SpanContext | None:
    """The remote span context a ``traceparent`` names; None when missing or malformed."""
    if not value:
        return None
    ctx = trace.get_current_span(_propagator.extract({"traceparent": value})).get_span_context()
    return ctx if ctx.is_valid else None


@dataclass(slots=True)
class _Batch:
    by_event: dict[str, SpanContext] = field(default_factory=dict)
    by_payment: dict[str, SpanContext] = field(default_factory=dict)


_BATCH: ContextVar[_Batch | None] = ContextVar("paystream_trace_batch", default=None)


def traceparent_for(causation_id: str | None) -> str | None:
    """The traceparent a new event carries: its cause's event span inside a batch, else the
    current span's; None when tracing is off or there is no span."""
    if _state is None:
        return None
    ctx: SpanContext | None = None
    batch = _BATCH.get()
    if batch is not None and causation_id is not None:
        ctx = batch.by_event.get(causation_id)
    if ctx is None:
        ctx = trace.get_current_span().get_span_context()
    return format_traceparent(ctx) if ctx.is_valid else None


def annotate(**attributes: str) -> None:
    """Set attributes on the current span (``payment_id=...`` becomes ``paystream.payment_id``)."""
    if _state is None:
        return
    span = trace.get_current_span()
    for key, value in attributes.items():
        span.set_attribute(f"paystream.{key}", value)


@contextlib.contextmanager
def consuming(
    consumer: str, envelopes: Sequence[Envelope], payment_id_of: Callable[[Envelope], str | None]
) -> Iterator[None]:
    """Around applying one batch: the batch span (current inside the block) and one event span
    per event, under the event's own trace (see the module's docstring)."""
    tracer = _tracer()
    parents = [parse_traceparent(e.traceparent) for e in envelopes]
    batch_span = tracer.start_span(
        f"{consumer} apply", kind=SpanKind.CONSUMER,
        attributes={"messaging.system": "nats", "messaging.operation.type": "process",
                    "messaging.consumer.group.name": consumer,
                    "messaging.batch.message_count": len(envelopes)},
        links=[Link(p) for p in parents if p is not None],
    )
    batch_link = [Link(batch_span.get_span_context())]
    batch = _Batch()
    event_spans = []
    for envelope, parent in zip(envelopes, parents, strict=True):
        attributes = {
            "messaging.system": "nats", "messaging.operation.type": "process",
            "messaging.destination.name": envelope.type, "messaging.message.id": envelope.id,
            "messaging.consumer.group.name": consumer, "paystream.correlation_id": envelope.correlation_id,
        }
        payment_id = payment_id_of(envelope)
        if payment_id:
            attributes[PAYMENT_ID] = payment_id
        span = tracer.start_span(
            f"process {envelope.type}", kind=SpanKind.CONSUMER, attributes=attributes, links=batch_link,
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent else otel_context.Context(),
        )
        event_spans.append(span)
        batch.by_event[envelope.id] = span.get_span_context()
        if payment_id:
            batch.by_payment[payment_id] = span.get_span_context()
    batch_token = _BATCH.set(batch)
    context_token = otel_context.attach(trace.set_span_in_context(batch_span))
    try:
        yield
    except BaseException as exc:
        batch_span.record_exception(exc)
        batch_span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        otel_context.detach(context_token)
        _BATCH.reset(batch_token)
        for span in event_spans:
            span.end()
        batch_span.end()


class _Traced(msgspec.Struct):
    traceparent: str | None = None


_traced = msgspec.json.Decoder(_Traced)


@contextlib.contextmanager
def publishing(messages: Sequence[tuple[str, str, bytes]]) -> Iterator[None]:
    """Around the relay's publish of (subject, event id, encoded envelope) messages: a PRODUCER
    span per event, a child of the span that made it (the outbox delay shows as the gap)."""
    tracer = _tracer()
    spans = []
    for subject, event_id, body in messages:
        try:
            parent = parse_traceparent(_traced.decode(body).traceparent)
        except msgspec.DecodeError:
            parent = None
        if parent is None:
            continue
        spans.append(tracer.start_span(
            f"publish {subject.rsplit('.', 1)[0]}", kind=SpanKind.PRODUCER,
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
            attributes={"messaging.system": "nats", "messaging.operation.type": "send",
                        "messaging.destination.name": subject, "messaging.message.id": event_id},
        ))
    try:
        yield
    except BaseException as exc:
        for span in spans:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        for span in spans:
            span.end()


@contextlib.contextmanager
def continued(traceparent: str | None, name: str, *, kind: SpanKind, attributes: dict[str, Any]) -> Iterator[Any]:
    """A span continuing the trace ``traceparent`` names (a webhook send, from its delivery row);
    yields the span (a non-recording one when tracing is off)."""
    if _state is None:
        yield trace.INVALID_SPAN
        return
    parent = parse_traceparent(traceparent)
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent else otel_context.Context()
    with _state.tracer.start_as_current_span(name, context=ctx, kind=kind, attributes=attributes) as span:
        yield span


def add_trace_ids(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: ``trace_id`` and ``span_id`` of the line's span, when it has one."""
    ctx: SpanContext | None = None
    batch = _BATCH.get()
    if batch is not None:
        event_id = event_dict.get("event_id")
        if isinstance(event_id, str):
            ctx = batch.by_event.get(event_id)
        payment_id = event_dict.get("payment_id")
        if ctx is None and isinstance(payment_id, str):
            ctx = batch.by_payment.get(payment_id)
    if ctx is None:
        ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict["trace_id"] = f"{ctx.trace_id:032x}"
        event_dict["span_id"] = f"{ctx.span_id:016x}"
    return event_dict


# New envelopes carry the trace that caused them (contracts import nothing of platform's, so
# the envelope asks whatever is put here; with tracing off `traceparent_for` answers None).
_envelope_module.trace_source = traceparent_for
