"""One payment through a stack that exports traces is ONE trace across all five services.

The stack's services export over OTLP/HTTP to a receiver in this test (`tests.otlp_receiver`),
with a short batch delay. A payment goes in through the gateway; once its webhook has
arrived, the spans that name the payment must all be in one trace, and that trace must hold
spans of the gateway, payments, fraud, ledger and notifications, from the gateway's request
to the webhook's send.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from paystream.platform.tracing import PAYMENT_ID
from paystream.tools.client import PaystreamClient
from paystream.tools.load_runs import registered_receiver
from paystream.tools.receiver import PaymentUpdate

from ..otlp_receiver import OtlpReceiver, ReceivedSpan
from .stack import running_stack

SERVICES = {f"paystream-{name}" for name in ("gateway", "payments", "fraud", "ledger", "notifications")}
SERVER, CLIENT, CONSUMER = 2, 3, 5  # OTLP span kinds (SpanKind in trace.proto)


async def _eventually(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {within:.0f}s (last: {value!r})")
        await asyncio.sleep(0.2)


async def test_one_payment_is_one_trace_through_all_five_services() -> None:
    async with OtlpReceiver() as otlp:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            # The test is about traces: a slow first screening on a busy machine must not send
            # the payment to review by the deadline instead.
            "PAYSTREAM_SCREENING_DEADLINE_SECONDS": "30",
        }
        async with running_stack(env, prefix="paystream-e2e-traces-") as stack:
            assert stack.info is not None
            async with PaystreamClient.for_stack(stack.info) as client, registered_receiver(client) as receiver:
                updates: list[PaymentUpdate] = []
                receiver.subscribe(updates.append)
                payer = await client.create_account()
                payee = await client.create_account()
                await client.deposit(payer["id"], 10_000)
                payment = await client.pay(payer["id"], payee["id"], 1_234)
                pid = payment["id"]
                await _eventually(
                    lambda: [u for u in updates if u.payment_id == pid and u.status == "succeeded"],
                    60, "the payment's payment.succeeded webhook",
                )

                def one_whole_trace() -> list[ReceivedSpan] | None:
                    traces = otlp.traces_with(PAYMENT_ID, pid)
                    if len(traces) != 1:
                        return None
                    spans = otlp.trace(next(iter(traces)))
                    if not SERVICES <= {s.service for s in spans}:
                        return None
                    if not any(s.name == "webhook send" for s in spans):
                        return None
                    ids = {s.span_id for s in spans}
                    if any(s.parent_span_id and s.parent_span_id not in ids for s in spans):
                        return None  # a parent still in some process's export queue
                    return spans

                try:
                    spans = await _eventually(one_whole_trace, 30, "one trace across the five services")
                except AssertionError:
                    traces = otlp.traces_with(PAYMENT_ID, pid)
                    seen = {t: sorted({(s.service, s.name) for s in otlp.trace(t)}) for t in traces}
                    raise AssertionError(f"traces naming {pid}: {json.dumps(seen, indent=1)}") from None

            log_lines = (stack.home / "logs" / "ledger.log").read_text().splitlines()

        trace_id = spans[0].trace_id
        # Everything that names the payment is in this trace, and nothing was cut off.
        assert otlp.traces_with(PAYMENT_ID, pid) == {trace_id}
        by_id = {s.span_id: s for s in spans}
        roots = [s for s in spans if not s.parent_span_id]
        assert len(roots) == 1, [(s.service, s.name) for s in roots]
        assert roots[0].service == "paystream-gateway" and roots[0].kind == SERVER
        for span in spans:
            if span.parent_span_id:
                assert span.parent_span_id in by_id, f"{span.service} {span.name}: parent not exported"
        # The bus is crossed by event spans, one per consumer on the way, each naming the payment.
        consumed = {(s.service, s.name) for s in spans if s.kind == CONSUMER and s.attributes.get(PAYMENT_ID) == pid}
        assert {
            ("paystream-fraud", "process payments.initiated"),
            ("paystream-ledger", "process fraud.approved"),
            ("paystream-payments", "process fraud.approved"),
            ("paystream-payments", "process ledger.posted"),
            ("paystream-notifications", "process payment.succeeded"),
        } <= consumed
        # HTTP in and out, PostgreSQL, Redis and the webhook itself have spans too.
        assert any(s.service == "paystream-payments" and s.kind == SERVER and s.attributes.get(PAYMENT_ID) == pid
                   for s in spans)
        assert any(s.service == "paystream-gateway" and s.kind == CLIENT for s in spans)  # gateway → payments
        send = next(s for s in spans if s.name == "webhook send")
        assert send.service == "paystream-notifications" and send.attributes[PAYMENT_ID] == pid
        assert send.attributes["http.response.status_code"] == 204
        db_systems = {s.attributes.get("db.system") or s.attributes.get("db.system.name") for s in otlp.spans}
        assert {"postgresql", "redis"} <= db_systems
        # A batch span of another trace holds the consumer's SQL, linked to the event's trace.
        ledger_event = next(s for s in spans if (s.service, s.name) == ("paystream-ledger", "process fraud.approved"))
        batch_span_id = ledger_event.links[0][1]
        batch = next(s for s in otlp.spans if s.span_id == batch_span_id)
        assert batch.name.endswith(" apply") and (trace_id, ledger_event.parent_span_id) in batch.links
        assert any(s.parent_span_id == batch.span_id and s.kind == CLIENT for s in otlp.trace(batch.trace_id))

        # The ledger's log line about posting this payment carries the payment's trace id.
        posted = [json.loads(line) for line in log_lines if '"ledger_posted"' in line and pid in line]
        assert posted and posted[0]["trace_id"] == trace_id and posted[0]["span_id"] == ledger_event.span_id
