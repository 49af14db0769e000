"""Screening: payments.initiated in, fraud.approved | fraud.declined | fraud.review out.

Also the human side: approving or declining a review emits the same events, naming the
review (a *resolution*), so an approval continues the payment as an automatic approval
would. And the reviews payments' screening deadline opened, put into the queue here with
a re-screen due (`fraud/rescreen.py` resolves them the same way once fraud is back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from paystream.contracts.envelope import Envelope, make_envelope
from paystream.contracts.events import (
    FraudApproved,
    FraudDeclined,
    FraudReview,
    PaymentInitiated,
    PaymentOrder,
    payload_of,
)
from paystream.contracts.internal import DeadlineReview
from paystream.fraud.domain import Decision, Facts, Rule, decide, needs_rescreen
from paystream.fraud.store import FraudStore, review_view
from paystream.fraud.velocity import VelocityCounter
from paystream.platform.errors import Conflict, NotFound
from paystream.platform.ids import new_id
from paystream.platform.observability import bound, get_logger, held_until_commit, log_on_commit
from paystream.platform.outbox import Outbox
from paystream.platform.resilience import Guard

log = get_logger(__name__)


class FraudHandlers:
    def __init__(
        self,
        *,
        store: FraudStore,
        outbox: Outbox,
        rules: Sequence[Rule],
        velocity: VelocityCounter,
        velocity_guard: Guard,
        rescreen_after: float = 1.0,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._rules = rules
        self._velocity = velocity
        self._guard = velocity_guard
        self._rescreen_after = timedelta(seconds=rescreen_after)

    async def screen(self, orders: Sequence[PaymentOrder], delay_ms: int = 0) -> list[Decision]:
        """The rules' decision for each order: the decision path, with no database work.

        ``delay_ms`` is the game-day fault (PUT /internal/faults): the path waits that long
        first, as when a dependency of the decision slows down (seed 001).
        """
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        counts = await self._recent_counts(orders)
        return [
            decide(self._rules, Facts(amount=order.amount, currency=order.currency, kind=order.kind,
                                      recent_payments=recent))
            for order, recent in zip(orders, counts, strict=True)
        ]

    async def _recent_counts(self, orders: Sequence[PaymentOrder]) -> list[int | None]:
        """Velocity per order; all None when the counter cannot answer in its budget."""
        now_ms = int(time.time() * 1000)
        items = [(o.account_key, o.payment_id, now_ms) for o in orders]
        try:
            counts = await self._guard.call(lambda: self._velocity.record(items))
        except Exception as exc:
            log.warning("velocity_unavailable", error=repr(exc), payments=len(orders))
            return [None] * len(orders)
        return list(counts)

    async def on_payments_initiated(self, conn: asyncpg.Connection, envelopes: list[Envelope]) -> None:
        initiated = [(e, payload_of(e, PaymentInitiated).order) for e in envelopes
                     if e.type == "payments.initiated"]
        if not initiated:
            return
        already = await self._store.decided(conn, [o.payment_id for _, o in initiated])
        todo = [(e, o) for e, o in initiated if o.payment_id not in already]
        if not todo:
            return
        delay_ms = await self._store.decision_delay_ms(conn)
        screened = await self.screen([o for _, o in todo], delay_ms)
        now = datetime.now(UTC)
        decisions: list[tuple[str, str, str, list[str]]] = []
        reviews: list[dict[str, Any]] = []
        events: list[Envelope] = []
        for (envelope, order), decision in zip(todo, screened, strict=True):
            with bound(payment_id=order.payment_id, correlation_id=envelope.correlation_id):
                log_on_commit(log, "fraud_decision", outcome=decision.outcome, reasons=list(decision.reasons))
            decisions.append((order.payment_id, order.tenant_id, decision.outcome, list(decision.reasons)))
            review_id = None
            if decision.outcome == "review":
                review_id = new_id("rev")
                reviews.append({
                    "id": review_id,
                    "tenant_id": order.tenant_id,
                    "payment_id": order.payment_id,
                    "reasons": list(decision.reasons),
                    "payment": msgspec.to_builtins(order),
                    "amount": order.amount,
                    "currency": order.currency,
                    "rescreen_at": now + self._rescreen_after if needs_rescreen(decision.reasons) else None,
                })
            events.append(_outcome_event(decision, order, review_id, envelope))
        await self._store.add_decisions(conn, decisions, now)
        await self._store.add_reviews(conn, reviews, now)
        await self._outbox.add(conn, events)

    async def decide_review(
        self,
        conn: asyncpg.Connection,
        *,
        tenant_id: str,
        review_id: str,
        approve: bool,
        decided_by: str,
        note: str | None,
        correlation_id: str,
    ) -> dict[str, Any]:
        """Approve or decline an open review; its event commits with the decision."""
        with held_until_commit():
            async with conn.transaction():
                row = await self._store.decide_review(
                    conn,
                    tenant_id=tenant_id,
                    review_id=review_id,
                    status="approved" if approve else "declined",
                    decided_by=decided_by,
                    note=note,
                    now=datetime.now(UTC),
                )
                if row is None:
                    existing = await self._store.get_review(conn, tenant_id, review_id)
                    if existing is None:
                        raise NotFound(f"no review {review_id}", code="review_not_found")
                    raise Conflict(
                        f"review {review_id} is already {existing['status']}", code="review_already_decided"
                    )
                order = msgspec.convert(row["payment"], PaymentOrder)
                reasons = ["review_approved" if approve else "review_declined"]
                with bound(payment_id=order.payment_id, review_id=review_id):
                    log_on_commit(log, "review_decided", approved=approve, by=decided_by)
                await self._outbox.add(
                    conn, [resolution_event(order, review_id, approve, reasons, correlation_id)]
                )
        return review_view(row)

    async def open_deadline_reviews(
        self, conn: asyncpg.Connection, reviews: Sequence[DeadlineReview], now: datetime
    ) -> None:
        """Put the reviews payments' screening deadline opened into the queue, each with a
        re-screen due (fraud was away: it screens them again once it answers in time). A
        payment that has a review already keeps it; a review sent twice is one review."""
        rows = []
        for review in reviews:
            order = review.payment
            with bound(payment_id=order.payment_id, review_id=review.id):
                log.info("deadline_review_received")
            rows.append({
                "id": review.id, "tenant_id": order.tenant_id, "payment_id": order.payment_id,
                "reasons": ["screening_deadline"], "payment": msgspec.to_builtins(order),
                "amount": order.amount, "currency": order.currency,
                "created_at": review.created_at, "rescreen_at": now + self._rescreen_after,
            })
        async with conn.transaction():
            await self._store.add_reviews(conn, rows, now)


def resolution_event(
    order: PaymentOrder, review_id: str, approve: bool, reasons: list[str], correlation_id: str
) -> Envelope:
    """The event that resolves a review: the ledger posts (approve) or voids its hold."""
    event: msgspec.Struct = (
        FraudApproved(order=order, review_id=review_id, reasons=reasons)
        if approve
        else FraudDeclined(order=order, review_id=review_id, reasons=reasons)
    )
    return make_envelope(event, partition_key=order.account_key,
                         correlation_id=correlation_id or order.payment_id)


def _outcome_event(
    decision: Decision, order: PaymentOrder, review_id: str | None, cause: Envelope
) -> Envelope:
    reasons = list(decision.reasons)
    event: msgspec.Struct
    if decision.outcome == "approve":
        event = FraudApproved(order=order, reasons=reasons)
    elif decision.outcome == "decline":
        event = FraudDeclined(order=order, reasons=reasons)
    else:
        assert review_id is not None
        event = FraudReview(order=order, review_id=review_id, reasons=reasons)
    return make_envelope(
        event,
        partition_key=order.account_key,
        correlation_id=cause.correlation_id,
        causation_id=cause.id,
    )
