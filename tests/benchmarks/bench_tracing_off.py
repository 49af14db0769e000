"""What tracing costs an event when it is off: the envelope's work per event, before and after.

Run from the repository root::

    .venv/bin/python -m tests.benchmarks.bench_tracing_off [--events 20000] [--runs 31]

With no OTLP endpoint the only per-event code tracing adds is in the envelope: the
``traceparent`` field (None, left out of the JSON) and `make_envelope` asking
`tracing.traceparent_for`, which returns at its first check. The consumer and the relay
check one flag per *batch*, log lines get no processor, HTTP gets no middleware. This
times what an event goes through in the envelope (made by a handler, encoded into the
outbox, decoded by the consumer) with today's code against a copy of the code before
tracing (``_Before`` below), interleaved run by run, and prints the fastest run of each in
ns/event of this thread's CPU time (wall time on a shared machine mostly measures the
others' load), and the added call alone. Last, for scale, what a consumed event costs with
tracing *on* (the spans' own work, without export or the instrumentations' query spans).
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from paystream.contracts.envelope import decode, encode, make_envelope
from paystream.contracts.events import FraudApproved, PaymentOrder
from paystream.contracts.ids import new_id
from paystream.platform import tracing


class _Before(msgspec.Struct, frozen=True, kw_only=True):
    """The envelope as it was before traces (no traceparent)."""

    id: str
    type: str
    version: int
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None
    partition_key: str
    payload: dict[str, Any]


_before_encoder = msgspec.json.Encoder()
_before_decoder = msgspec.json.Decoder(_Before)


def _make_before(event: msgspec.Struct, *, partition_key: str, correlation_id: str,
                 causation_id: str | None = None) -> _Before:
    event_type, version = type(event).__event_type__  # type: ignore[attr-defined]
    return _Before(
        id=new_id("evt"), type=event_type, version=version, occurred_at=datetime.now(UTC),
        correlation_id=correlation_id, causation_id=causation_id, partition_key=partition_key,
        payload=msgspec.to_builtins(event),
    )


def _order(n: int) -> PaymentOrder:
    return PaymentOrder(payment_id=f"pay_{n:020d}", tenant_id="ten_00000000000000000001", kind="transfer",
                        source_account_id="acc_0000000000000000001", destination_account_id="acc_000000000002",
                        amount=1234, currency="USD")


def _after(events: list[FraudApproved]) -> float:
    started = time.thread_time()
    for event in events:
        decode(encode(make_envelope(event, partition_key="acc_1", correlation_id="pay_1", causation_id="evt_1")))
    return time.thread_time() - started


def _before(events: list[FraudApproved]) -> float:
    started = time.thread_time()
    for event in events:
        _before_decoder.decode(_before_encoder.encode(
            _make_before(event, partition_key="acc_1", correlation_id="pay_1", causation_id="evt_1")))
    return time.thread_time() - started


def _hook_alone(n: int) -> float:
    """The one call tracing adds to `make_envelope`, alone."""
    traceparent_for = tracing.traceparent_for
    started = time.thread_time()
    for _ in range(n):
        traceparent_for("evt_1")
    return time.thread_time() - started


def _consuming_on(events: list[FraudApproved], batch: int = 256) -> float:
    """Tracing on: a consumer's batch (batch span, an event span each) and one caused envelope
    per event, spans handed to an exporter that drops them; CPU seconds per event."""
    from paystream.contracts.events import PaymentInitiated, payment_id_of

    with tracing._tracer().start_as_current_span("upstream"):
        incoming = [make_envelope(PaymentInitiated(order=e.order), partition_key="acc_1", correlation_id="pay_1")
                    for e in events[:batch]]
    started = time.thread_time()
    with tracing.consuming("fraud", incoming, payment_id_of):
        for event, cause in zip(events[:batch], incoming, strict=True):
            make_envelope(event, partition_key="acc_1", correlation_id="pay_1", causation_id=cause.id)
    return (time.thread_time() - started) / batch


def _measure_on(events: list[FraudApproved], runs: int) -> None:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracing.configure_tracing("bench", endpoint=None, exporter=Dropped())
    try:
        on = [_consuming_on(events) * 1e6 for _ in range(runs)]
    finally:
        tracing.shutdown_tracing()
    print(f"tracing on, per consumed event (its span, a share of the batch span, one caused envelope): "
          f"{min(on):.1f} us (fastest of {runs}; median {statistics.median(on):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=31)
    args = parser.parse_args()
    assert not tracing.enabled()
    events = [FraudApproved(order=_order(n)) for n in range(args.events)]
    _before(events[:10_000])
    _after(events[:10_000])
    before, after, hook = [], [], []
    for _ in range(args.runs):
        before.append(_before(events) / args.events * 1e9)
        after.append(_after(events) / args.events * 1e9)
        hook.append(_hook_alone(args.events) / args.events * 1e9)
    # The minimum of interleaved runs: on a shared machine the other runs measure its load.
    b, a = min(before), min(after)
    print(f"before traces: {b:8.0f} ns/event  (fastest of {args.runs}; median {statistics.median(before):.0f})")
    print(f"tracing off:   {a:8.0f} ns/event  (fastest of {args.runs}; median {statistics.median(after):.0f})")
    print(f"difference:    {a - b:+8.0f} ns/event ({(a - b) / b:+.1%})")
    print(f"traceparent_for alone: {min(hook):.0f} ns/call")
    _measure_on(events, args.runs)


if __name__ == "__main__":
    main()
