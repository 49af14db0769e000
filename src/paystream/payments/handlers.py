"""Payments commands and events, the one home of both.

Commands: create a transfer or deposit (`PaymentHandlers.create_payment`), refund a payment
(`create_refund`); both check the request with the rules of `domain` and store the payment
with its ``payments.initiated`` event (`create`). Events: fraud and ledger outcomes move a
payment along its state machine (`on_outcomes`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from paystream.contracts.api import Payment
from paystream.contracts.bodies import Body
from paystream.contracts.envelope import Envelope, make_envelope
from paystream.contracts.events import (
    EVENT_TYPES,
    LedgerPosted,
    LedgerRejected,
    PaymentInitiated,
    PaymentOrder,
    payload_of,
)
from paystream.contracts.ids import AccountId, PaymentId, TenantId, new_id
from paystream.contracts.money import Money
from paystream.payments.directory import AccountDirectory
from paystream.payments.domain import (
    DEADLINE_REASON,
    NewPayment,
    PaymentRequest,
    Signal,
    Transition,
    accounts_to_check,
    admit,
    next_state,
    refund_amount,
)
from paystream.payments.store import PaymentsStore, StatusUpdate, TimelineRow
from paystream.platform import tracing
from paystream.platform.errors import NotFound, PoisonMessage
from paystream.platform.http import Caller
from paystream.platform.observability import bound, get_logger, log_on_commit
from paystream.platform.outbox import Outbox

log = get_logger(__name__)


class PaymentHandlers:
    """Payments' commands and event handlers.

    The commands (`create_payment`, `create_refund`) need ``pool`` and ``directory``; the
    event handlers and `create` work on the connection they are given.
    """

    def __init__(
        self,
        store: PaymentsStore,
        outbox: Outbox,
        *,
        pool: asyncpg.Pool | None = None,
        directory: AccountDirectory | None = None,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._pool = pool
        self._directory = directory

    async def create_payment(self, caller: Caller, request: PaymentRequest) -> Body:
        """A transfer or deposit, checked against its accounts; the payment's body.

        ``caller.idempotency_key`` is required (the API checks it): a key the client used
        before returns that payment unchanged.
        """
        assert self._pool is not None and self._directory is not None
        assert caller.idempotency_key
        wanted = accounts_to_check(request)
        accounts = await self._directory.lookup(caller, wanted)
        exchange = admit(request, accounts, caller.user_id)
        payment = NewPayment(
            id=PaymentId(new_id("pay")),
            kind=request.kind,
            tenant_id=TenantId(caller.tenant_id),
            client_id=caller.client_id,
            idempotency_key=f"{caller.client_id}:{caller.idempotency_key}",
            created_at=datetime.now(UTC),
            source_account_id=request.source_account_id,
            destination_account_id=request.destination_account_id,
            amount=request.amount,
            description=request.description,
            metadata=request.metadata,
            exchange=exchange,
        )
        async with self._pool.acquire() as conn:
            body, _ = await self.create(conn, payment, caller.correlation_id)
        return body

    async def create_refund(
        self,
        caller: Caller,
        payment_id: str,
        *,
        amount: int | None,
        description: str | None,
        metadata: dict[str, str],
    ) -> Body:
        """A refund of ``payment_id`` (``amount`` None: all that is left); the refund's body.

        The original is locked while its refunds are counted, so two refunds of one payment
        never claim the same money. A key the client used before returns that payment.
        """
        assert self._pool is not None
        assert caller.idempotency_key
        key = f"{caller.client_id}:{caller.idempotency_key}"
        async with self._pool.acquire() as conn, conn.transaction():
            replay = await self._store.by_idempotency_key(conn, caller.tenant_id, key)
            if replay is not None:
                return Payment.body(replay)
            await self.visible_payment(conn, caller, payment_id, owning="destination_account_id")
            original = await self._store.lock_one(conn, caller.tenant_id, payment_id)
            assert original is not None
            claimed = await self._store.refunds_claimed(conn, payment_id)
            refunded = refund_amount(original["kind"], original["status"], original["amount"],
                                     claimed, amount)
            refund = NewPayment(
                id=PaymentId(new_id("pay")),
                kind="refund",
                tenant_id=TenantId(caller.tenant_id),
                client_id=caller.client_id,
                idempotency_key=key,
                created_at=datetime.now(UTC),
                source_account_id=_account(original["destination_account_id"]),
                destination_account_id=_account(original["source_account_id"]),
                amount=Money(refunded, original["currency"]),
                refund_of=PaymentId(payment_id),
                description=description,
                metadata=metadata,
            )
            body, _ = await self.create(conn, refund, caller.correlation_id)
        return body

    async def visible_payment(
        self, conn: asyncpg.Connection, caller: Caller, payment_id: str, owning: str | None = None
    ) -> asyncpg.Record:
        """The payment, if the caller may see it: a user sees payments touching their accounts
        (with ``owning``, only those whose account in that column is theirs); else 404."""
        row = await self._store.get(conn, caller.tenant_id, payment_id)
        if row is not None and caller.user_id:
            columns = (owning,) if owning else ("source_account_id", "destination_account_id")
            touched = [row[c] for c in columns if row[c]]
            owners = await self._store.directory_get(conn, touched)
            if not any(e.owner_user_id == caller.user_id for e in owners.values()):
                row = None
        if row is None:
            raise NotFound(f"no payment {payment_id}", code="payment_not_found")
        return row

    async def create(
        self, conn: asyncpg.Connection, new: NewPayment, correlation_id: str
    ) -> tuple[Body, bool]:
        """Store a new payment and its ``payments.initiated`` event in one statement.

        Returns (payment, created); ``created`` is False when the idempotency key
        already named a payment, which is returned unchanged.
        """
        order = order_of_new(new)
        envelope = make_envelope(
            PaymentInitiated(order=order),
            partition_key=order.account_key,
            correlation_id=correlation_id or new.id,
            occurred_at=new.created_at,
        )
        row, created = await self._store.insert_payment(
            conn, new, initiated=self._outbox.rows([envelope]), timeline_id=envelope.id)
        tracing.annotate(payment_id=row["id"])  # on the request's span, when tracing is on
        return Payment.body(row), created

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


def order_of_new(payment: NewPayment) -> PaymentOrder:
    """`order_of` the row ``payment`` becomes: known before it is written, so the payment and
    its event go in one statement."""
    exchange = payment.exchange
    return PaymentOrder(
        payment_id=payment.id,
        tenant_id=payment.tenant_id,
        kind=payment.kind,
        source_account_id=payment.source_account_id,
        destination_account_id=payment.destination_account_id,
        amount=payment.amount.amount,
        currency=payment.amount.currency,
        refund_of=payment.refund_of,
        destination_amount=exchange.received.amount if exchange else None,
        destination_currency=exchange.received.currency if exchange else None,
    )


def _account(value: str | None) -> AccountId | None:
    return None if value is None else AccountId(value)


def _payment_id(envelope: Envelope) -> str:
    payload = envelope.payload
    if "payment_id" in payload:
        return str(payload["payment_id"])
    return str(payload["order"]["payment_id"])
