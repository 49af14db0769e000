"""Payments commands and events: create a payment; move it along on fraud and ledger outcomes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from paystream.contracts.api import Payment
from paystream.contracts.envelope import Envelope, make_envelope
from paystream.contracts.events import (
    EVENT_TYPES,
    LedgerPosted,
    LedgerRejected,
    PaymentInitiated,
    PaymentOrder,
    payload_of,
)
from paystream.contracts.ids import new_id
from paystream.payments.domain import DEADLINE_REASON, Signal, Transition, next_state
from paystream.payments.store import PaymentsStore, StatusUpdate, TimelineRow
from paystream.platform import tracing
from paystream.platform.errors import PoisonMessage
from paystream.platform.observability import bound, get_logger, log_on_commit
from paystream.platform.outbox import Outbox

log = get_logger(__name__)


class PaymentHandlers:
    def __init__(self, store: PaymentsStore, outbox: Outbox) -> None:
        self._store = store
        self._outbox = outbox

    async def create(
        self, conn: asyncpg.Connection, values: dict[str, Any], correlation_id: str
    ) -> tuple[dict[str, Any], bool]:
        """Store a new payment and its ``payments.initiated`` event in one transaction.

        Returns (payment, created); ``created`` is False when the idempotency key
        already named a payment, which is returned unchanged.
        """
        async with conn.transaction():
            row, created = await self._store.insert_payment(conn, values)
            tracing.annotate(payment_id=row["id"])  # on the request's span, when tracing is on
            payment = Payment.body(row)
            if not created:
                return payment, False
            order = order_of(row)
            envelope = make_envelope(
                PaymentInitiated(order=order),
                partition_key=order.account_key,
                correlation_id=correlation_id or row["id"],
                occurred_at=row["created_at"],
            )
            await self._store.add_timeline(
                conn,
                [TimelineRow(envelope.id, row["id"], "payment.created", "processing", None)],
                row["created_at"],
            )
            await self._outbox.add(conn, [envelope])
        return payment, True

    async def on_outcomes(self, conn: asyncpg.Connection, envelopes: list[Envelope]) -> None:
        """Fraud and ledger outcomes for a batch of payments, applied in delivery order."""
        signals = [(e, signal) for e in envelopes if (signal := signal_of(e)) is not None]
        if not signals:
            return
        payments = await self._store.lock(conn, {_payment_id(e) for e, _ in signals})
        now = datetime.now(UTC)
        changes = Changes()
        for envelope, signal in signals:
            payment_id = _payment_id(envelope)
            payment = payments.get(payment_id)
            with bound(payment_id=payment_id, correlation_id=envelope.correlation_id):
                if payment is None:
                    raise PoisonMessage(f"{envelope.type} for unknown payment {payment_id}")
                failure_code = None
                if envelope.type == "ledger.rejected":
                    failure_code = payload_of(envelope, LedgerRejected).failure_code
                transition = next_state(payment["status"], signal, failure_code,
                                        screened=payment["screening"] is not None)
                if transition is None:
                    log.debug("payment_signal_ignored", signal=signal, status=payment["status"],
                              screening=payment["screening"])
                    continue
                changes.apply(payment, transition, signal, envelope, now)
                if transition.status == "succeeded" and payment["refund_of"]:
                    original = payment["refund_of"]
                    changes.refunded[original] = changes.refunded.get(original, 0) + payment["amount"]
                    posted = payload_of(envelope, LedgerPosted) if envelope.type == "ledger.posted" else None
                    if posted is not None and posted.source_amount is not None and posted.source_currency is not None:
                        # A refund of an exchange: what it took back in the payee's currency.
                        changes.taken[payment_id] = (posted.source_amount, posted.source_currency)
                        payment["source_amount"] = posted.source_amount
                        payment["source_currency"] = posted.source_currency
        await changes.write(conn, self._store, self._outbox, now)


class Changes:
    """What a batch of transitions writes: status updates, timeline rows, public events."""

    def __init__(self) -> None:
        self.updates: dict[str, StatusUpdate] = {}
        self.refunded: dict[str, int] = {}
        self.taken: dict[str, tuple[int, str]] = {}
        self.timeline: list[TimelineRow] = []
        self.events: list[Envelope] = []
        self.review_reasons: dict[str, list[str]] = {}

    def apply(
        self, payment: dict[str, Any], transition: Transition, signal: str, cause: Envelope | None,
        now: datetime,
    ) -> None:
        """Apply ``transition`` to ``payment`` (a locked row, updated in place) and queue its writes."""
        if transition.status != payment["status"]:
            log_on_commit(log, "payment_status", status=transition.status, signal=signal)
        if transition.status == "requires_review" and payment["status"] != "requires_review":
            reasons = [DEADLINE_REASON] if cause is None else [str(r) for r in cause.payload.get("reasons") or []]
            payment["review_reasons"] = self.review_reasons[payment["id"]] = reasons
        payment["status"] = transition.status
        payment["failure_code"] = transition.failure_code
        payment["screening"] = payment["screening"] or transition.screening
        payment["updated_at"] = now
        self.updates[payment["id"]] = StatusUpdate(
            payment["id"], transition.status, transition.failure_code, transition.screening
        )
        event_id = new_id("evt")
        if transition.public_event:
            event_cls = EVENT_TYPES[transition.public_event]
            out = make_envelope(
                event_cls(tenant_id=payment["tenant_id"], data=Payment.body(payment)),
                partition_key=payment["source_account_id"] or payment["destination_account_id"],
                correlation_id=cause.correlation_id if cause else payment["id"],
                causation_id=cause.id if cause else None,
                occurred_at=now,
            )
            self.events.append(out)
            event_id = out.id
        if transition.timeline_type:
            self.timeline.append(
                TimelineRow(event_id, payment["id"], transition.timeline_type, transition.status,
                            transition.failure_code)
            )

    async def write(
        self, conn: asyncpg.Connection, store: PaymentsStore, outbox: Outbox, now: datetime
    ) -> None:
        await store.apply_updates(conn, list(self.updates.values()), now)
        await store.add_refunded(conn, self.refunded, now)
        await store.set_source_side(conn, self.taken, now)
        await store.add_timeline(conn, self.timeline, now)
        await store.set_review_reasons(conn, self.review_reasons)
        await outbox.add(conn, self.events)


def signal_of(envelope: Envelope) -> Signal | None:
    """The state machine's signal an event carries; None for events payments ignores.

    A fraud outcome that names a review resolves that review (a reviewer's decision or a
    re-screen); one that does not is an automatic screening decision.
    """
    kind = envelope.type
    if kind in ("fraud.approved", "fraud.declined"):
        if envelope.payload.get("review_id") is not None:
            return "review.approved" if kind == "fraud.approved" else "review.declined"
        return kind  # type: ignore[return-value]
    if kind in ("fraud.review", "ledger.posted", "ledger.rejected"):
        return kind  # type: ignore[return-value]
    return None


def order_of(row: asyncpg.Record | dict[str, Any]) -> PaymentOrder:
    """What the payment asks the ledger to do."""
    return PaymentOrder(
        payment_id=row["id"],
        tenant_id=row["tenant_id"],
        kind=row["kind"],
        source_account_id=row["source_account_id"],
        destination_account_id=row["destination_account_id"],
        amount=row["amount"],
        currency=row["currency"],
        refund_of=row["refund_of"],
        destination_amount=row["destination_amount"],
        destination_currency=row["destination_currency"],
    )


def _payment_id(envelope: Envelope) -> str:
    payload = envelope.payload
    if "payment_id" in payload:
        return str(payload["payment_id"])
    return str(payload["order"]["payment_id"])
