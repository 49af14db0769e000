"""Screening: payments.initiated in, fraud.approved | fraud.declined | fraud.review out.

Each batch: velocity and features from Redis side by side, the rules, the model's score
in-process, `domain.combine` (mode ``on``; ``shadow`` records the score and decides by the
rules), then decisions, reviews, payment facts, scores and events in the consumer's
transaction. Any failure of the model path leaves the rules deciding alone (docs/fraud-model.md).

Also the human side: approving or declining a review emits the same events, naming the
review (a *resolution*), so an approval continues the payment as an automatic approval
would. And the reviews payments' screening deadline opened, put into the queue here with
a re-screen due (`fraud/rescreen.py` resolves them the same way once fraud is back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from prometheus_client import Counter

from paystream.contracts.api import Review
from paystream.contracts.envelope import Envelope, make_envelope
from paystream.contracts.events import (
    FraudApproved,
    FraudDeclined,
    FraudReview,
    PaymentInitiated,
    PaymentOrder,
    payload_of,
)
from paystream.contracts.ids import new_id
from paystream.contracts.internal import DeadlineReview
from paystream.fraud.domain import Decision, Facts, ModelMode, ModelScore, Rule, combine, decide, needs_rescreen
from paystream.fraud.features import OnlineFeatures, PaymentFacts, facts_of_order, vector
from paystream.fraud.model import ModelSource
from paystream.fraud.store import FraudStore
from paystream.fraud.velocity import VelocityCounter
from paystream.platform.errors import Conflict, NotFound
from paystream.platform.observability import bound, get_logger, held_until_commit, log_on_commit
from paystream.platform.outbox import Outbox
from paystream.platform.resilience import Guard

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Screened:
    """One payment screened: the decision that stands, the facts the features saw, and the
    model's score (None when it did not score: mode off, a refund, or a fallback to the rules)."""

    decision: Decision
    facts: PaymentFacts
    score: ModelScore | None


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
        features: OnlineFeatures | None = None,
        features_guard: Guard | None = None,
        models: ModelSource | None = None,
        mode: ModelMode = "off",
        fallbacks: Counter | None = None,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._rules = rules
        self._velocity = velocity
        self._guard = velocity_guard
        self._rescreen_after = timedelta(seconds=rescreen_after)
        self._features = features
        self._features_guard = features_guard
        self._models = models
        self._mode: ModelMode = mode if features is not None and models is not None else "off"
        self._fallbacks = fallbacks

    async def screen(self, orders: Sequence[PaymentOrder], delay_ms: int = 0) -> list[Decision]:
        """The decision for each order: the decision path, with no database work."""
        return [screened.decision for screened in await self.screen_all(orders, delay_ms)]

    async def screen_all(self, orders: Sequence[PaymentOrder], delay_ms: int = 0) -> list[Screened]:
        """Rules and model for each order, with what the model said (the decision path, no database work).

        ``delay_ms`` is the game-day fault (PUT /internal/faults): the path waits that long
        first, as when a dependency of the decision slows down (seed 001). Velocity and
        features are asked side by side (two Redis round trips at once).
        """
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        now_ms = int(time.time() * 1000)
        facts = [facts_of_order(order, now_ms) for order in orders]
        counts, scores = await asyncio.gather(self._recent_counts(orders, now_ms), self._scores(orders, facts))
        screened = []
        for order, fact, recent, score in zip(orders, facts, counts, scores, strict=True):
            rules = decide(self._rules, Facts(amount=order.amount, currency=order.currency, kind=order.kind,
                                              recent_payments=recent))
            decision = combine(rules, score) if self._mode == "on" else rules
            screened.append(Screened(decision, fact, score))
        return screened

    async def _recent_counts(self, orders: Sequence[PaymentOrder], now_ms: int) -> list[int | None]:
        """Velocity per order; all None when the counter cannot answer in its budget."""
        items = [(o.account_key, o.payment_id, now_ms) for o in orders]
        try:
            counts = await self._guard.call(lambda: self._velocity.record(items))
        except Exception as exc:
            log.warning("velocity_unavailable", error=repr(exc), payments=len(orders))
            return [None] * len(orders)
        return list(counts)

    def _fall_back(self, reason: str, payments: int) -> None:
        if self._fallbacks is not None and payments:
            self._fallbacks.labels(reason).inc(payments)

    async def _scores(self, orders: Sequence[PaymentOrder], facts: Sequence[PaymentFacts]) -> list[ModelScore | None]:
        """The model's score per order; None for refunds, and for all when the model cannot score.

        Features are recorded whether or not a model is loaded (the state must follow all
        traffic). A failure here never fails the screening: the rules decide alone, a
        metric counts it (``paystream_fraud_model_fallbacks_total{reason}``) and a line says why.
        """
        none: list[ModelScore | None] = [None] * len(orders)
        if self._mode == "off" or self._features is None or self._models is None:
            return none
        scorable = [i for i, order in enumerate(orders) if order.kind != "refund"]
        if not scorable:
            return none
        features, guard = self._features, self._features_guard
        batch = [facts[i] for i in scorable]
        try:
            if guard is None:
                raws = await features.record(batch)
            else:
                raws = await guard.call(lambda: features.record(batch))
        except Exception as exc:
            log.warning("features_unavailable", error=repr(exc), payments=len(scorable))
            self._fall_back("features_unavailable", len(scorable))
            return none
        model = self._models.model
        if model is None:
            self._fall_back("no_model", len(scorable))
            return none
        try:
            scores = model.score([vector(raw, fact) for raw, fact in zip(raws, batch, strict=True)])
        except Exception as exc:
            log.error("fraud_model_failed", error=repr(exc), version=model.version, payments=len(scorable))
            self._fall_back("scoring_failed", len(scorable))
            return none
        for i, score in zip(scorable, scores, strict=True):
            none[i] = score
        return none

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
        screened = await self.screen_all([o for _, o in todo], delay_ms)
        now = datetime.now(UTC)
        decisions: list[tuple[str, str, str, list[str]]] = []
        reviews: list[dict[str, Any]] = []
        events: list[Envelope] = []
        scores: list[tuple[str, ModelScore]] = []
        for (envelope, order), one in zip(todo, screened, strict=True):
            decision, score = one.decision, one.score
            with bound(payment_id=order.payment_id, correlation_id=envelope.correlation_id):
                log_on_commit(log, "fraud_decision", outcome=decision.outcome, reasons=list(decision.reasons),
                              score=None if score is None else round(score.score, 6),
                              model_version=None if score is None else score.version, model_mode=self._mode)
            decisions.append((order.payment_id, order.tenant_id, decision.outcome, list(decision.reasons)))
            if score is not None:
                scores.append((order.payment_id, score))
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
                    "score": None if score is None else score.score,
                    "model_version": None if score is None else score.version,
                })
            events.append(_outcome_event(decision, order, review_id, envelope))
        await self._store.add_decisions(conn, decisions, now)
        await self._store.add_reviews(conn, reviews, now)
        if self._mode != "off":
            await self._store.add_facts(conn, [one.facts for (_, order), one in zip(todo, screened, strict=True)
                                               if order.kind != "refund"])
            await self._store.add_scores(conn, self._mode, scores, now)
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
                await self._store.add_label(
                    conn, payment_id=order.payment_id, tenant_id=tenant_id, source="review",
                    label=0 if approve else 1, reason=reasons[0], note=note, created_by=decided_by,
                    now=datetime.now(UTC),
                )
                with bound(payment_id=order.payment_id, review_id=review_id):
                    log_on_commit(log, "review_decided", approved=approve, by=decided_by)
                await self._outbox.add(
                    conn, [resolution_event(order, review_id, approve, reasons, correlation_id)]
                )
        return Review.body(row)

    async def report_fraud(
        self, conn: asyncpg.Connection, *, tenant_id: str, payment_id: str, reason: str, note: str | None,
        reported_by: str,
    ) -> tuple[dict[str, Any], bool]:
        """Store a fraud report as a training label; (report, created). A payment fraud never
        screened for this tenant is not found; a second report returns the first."""
        async with conn.transaction():
            if not await self._store.decided_for(conn, tenant_id, payment_id):
                raise NotFound(f"no payment {payment_id}", code="payment_not_found")
            row, created = await self._store.add_label(
                conn, payment_id=payment_id, tenant_id=tenant_id, source="report", label=1, reason=reason,
                note=note, created_by=reported_by, now=datetime.now(UTC),
            )
        if created:
            with bound(payment_id=payment_id):
                log.info("fraud_reported", reason=reason, by=reported_by)
        return dict(row), created

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
