# ruff: noqa: F811 - the fixtures of test_stores, imported and used by name
"""The screening deadline and re-screening on a real PostgreSQL (and Redis), as each role.

Payments' deadline worker sends overdue payments to review once, however many copies run;
the ledger holds their funds and ignores fraud's late decision; fraud queues the deadline's
reviews and re-screens them, deferring while its decisions are slower than their budget.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry, Counter

from paystream.contracts.envelope import Envelope, make_envelope
from paystream.contracts.events import FraudApproved, FraudReview, PaymentInitiated, PaymentOrder
from paystream.contracts.ids import new_id
from paystream.contracts.internal import DeadlineReview
from paystream.fraud.rescreen import Rescreener
from paystream.fraud.store import FraudStore
from paystream.ledger.handlers import LedgerHandlers
from paystream.ledger.store import LedgerStore
from paystream.payments.deadline import FRAUD_ROUTE, LOOKUP_ROUTE, ScreeningDeadline
from paystream.payments.handlers import PaymentHandlers
from paystream.payments.store import PaymentsStore
from paystream.platform.errors import TransientError
from paystream.platform.internal import InternalResponse
from paystream.platform.outbox import Outbox
from paystream.platform.resilience import Guard

from .test_stores import (  # noqa: F401 - fixtures
    TENANT,
    _outbox_events,
    _payment_values,
    _posted_balance,
    _signal,
    _wallet,
    fraud,
    ledger,
    payments,
    role_db,
)

LATER = timedelta(seconds=10)


class FakeFraud:
    """Stands in for fraud's internal API: records the reviews it was sent (answering
    ``status``) and says it decided the payments in ``decided``; ``away`` refuses all."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.sent: list[dict[str, Any]] = []
        self.decided: set[str] = set()
        self.away = False

    async def request(self, method: str, path: str, caller: Any, *, content: bytes | None = None,
                      **_: Any) -> InternalResponse:
        assert method == "POST" and content is not None
        if self.away:
            raise TransientError("fraud: connection refused")
        if path == LOOKUP_ROUTE:
            asked = msgspec.json.decode(content)["payment_ids"]
            body = {"decided": sorted(self.decided & set(asked))}
            return InternalResponse(200, msgspec.json.encode(body), {})
        assert path == FRAUD_ROUTE
        self.sent.extend(msgspec.json.decode(content)["reviews"])
        return InternalResponse(self.status, b"", {})


def _worker(pool: Any, fraud_api: FakeFraud | None = None) -> tuple[ScreeningDeadline, Counter]:
    counter = Counter("paystream_screening_deadline_total", "test", registry=CollectorRegistry())
    worker = ScreeningDeadline(pool, PaymentsStore(), Outbox(4), fraud_api or FakeFraud(),  # type: ignore[arg-type]
                               counter, deadline=2.0)
    return worker, counter


async def _create(pool: Any, amount: int = 500, created_at: datetime | None = None) -> str:
    values = _payment_values(key=uuid.uuid4().hex, amount=amount)
    values = replace(values, created_at=created_at or values.created_at)
    async with pool.acquire() as conn:
        payment, _ = await PaymentHandlers(PaymentsStore(), Outbox(4)).create(conn, values, "corr")
    return str(payment["id"])


async def _status(pool: Any, payment_id: str) -> tuple[str, str | None]:
    row = await pool.fetchrow("SELECT status, screening FROM payments WHERE id = $1", payment_id)
    return row["status"], row["screening"]


async def test_an_overdue_payment_goes_to_review_with_a_hold_event_and_a_review_for_fraud(
    payments: Any,
) -> None:
    worker, counter = _worker(payments)
    pid = await _create(payments)

    assert await worker.sweep_once(datetime.now(UTC)) == 0  # not overdue yet
    assert await worker.sweep_once(datetime.now(UTC) + LATER) == 1

    assert await _status(payments, pid) == ("requires_review", "deadline")
    events = [e for e in await _outbox_events(payments) if e.type != "payments.initiated"]
    assert [e.type for e in events] == ["payment.requires_review", "fraud.review"]
    review = msgspec.convert(events[1].payload, FraudReview)
    assert (review.order.payment_id, review.reasons) == (pid, ["screening_deadline"])
    assert counter._value.get() == 1
    timeline = await payments.fetch("SELECT type FROM payment_events WHERE payment_id = $1 "
                                    "ORDER BY created_at", pid)
    assert [t["type"] for t in timeline] == ["payment.created", "payment.screening_deadline"]
    row = await payments.fetchrow("SELECT review_id, sent_at FROM deadline_reviews WHERE payment_id = $1", pid)
    assert row["review_id"] == review.review_id and row["sent_at"] is None


async def test_a_just_started_worker_gives_the_consumers_one_deadline_first(payments: Any) -> None:
    long_ago = datetime.now(UTC) - timedelta(minutes=5)  # created before a crash
    pid = await _create(payments, created_at=long_ago)
    worker, _ = _worker(payments)
    now = datetime.now(UTC)

    assert await worker.sweep_once(now) == 0
    assert await worker.sweep_once(now + timedelta(seconds=2.1)) == 1
    assert await _status(payments, pid) == ("requires_review", "deadline")


async def test_a_payment_fraud_already_decided_is_left_alone_by_the_deadline(payments: Any) -> None:
    worker, _ = _worker(payments)
    pid = await _create(payments)
    handlers = PaymentHandlers(PaymentsStore(), Outbox(4))
    order = PaymentOrder(payment_id=pid, tenant_id=TENANT, kind="transfer", source_account_id="acc_src",
                         destination_account_id="acc_dst", amount=500, currency="EUR")
    async with payments.acquire() as conn, conn.transaction():
        await handlers.on_outcomes(conn, [_signal(FraudApproved(order=order), pid)])

    assert await worker.sweep_once(datetime.now(UTC) + LATER) == 0
    assert await _status(payments, pid) == ("processing", "approve")


async def test_a_payment_fraud_decided_but_whose_decision_is_still_on_its_way_is_left_alone(
    payments: Any,
) -> None:
    fraud_api = FakeFraud()
    worker, _ = _worker(payments, fraud_api)
    slow, late = await _create(payments), await _create(payments)
    fraud_api.decided = {slow}  # our consumer has not applied it yet

    assert await worker.sweep_once(datetime.now(UTC) + LATER) == 1
    assert await _status(payments, slow) == ("processing", None)
    assert await _status(payments, late) == ("requires_review", "deadline")


async def test_a_decision_fraud_claims_is_awaited_only_so_long(payments: Any) -> None:
    fraud_api = FakeFraud()
    worker, _ = _worker(payments, fraud_api)
    pid = await _create(payments)
    fraud_api.decided = {pid}  # but it never arrives (fraud's outbox stuck, say)

    assert await worker.sweep_once(datetime.now(UTC) + timedelta(seconds=60)) == 1
    assert await _status(payments, pid) == ("requires_review", "deadline")


async def test_the_deadline_acts_when_fraud_does_not_answer_at_all(payments: Any) -> None:
    fraud_api = FakeFraud()
    fraud_api.away = True
    worker, _ = _worker(payments, fraud_api)
    pid = await _create(payments)

    assert await worker.sweep_once(datetime.now(UTC) + LATER) == 1
    assert await _status(payments, pid) == ("requires_review", "deadline")


async def test_fraud_approval_after_the_deadline_leaves_the_payment_in_review(payments: Any) -> None:
    worker, _ = _worker(payments)
    pid = await _create(payments)
    await worker.sweep_once(datetime.now(UTC) + LATER)
    handlers = PaymentHandlers(PaymentsStore(), Outbox(4))
    order = PaymentOrder(payment_id=pid, tenant_id=TENANT, kind="transfer", source_account_id="acc_src",
                         destination_account_id="acc_dst", amount=500, currency="EUR")
    async with payments.acquire() as conn, conn.transaction():
        await handlers.on_outcomes(conn, [_signal(FraudApproved(order=order), pid)])
    assert await _status(payments, pid) == ("requires_review", "deadline")

    async with payments.acquire() as conn, conn.transaction():
        await handlers.on_outcomes(conn, [_signal(FraudApproved(order=order, review_id="rev_1"), pid)])
    assert await _status(payments, pid) == ("processing", "deadline")


async def test_two_deadline_workers_at_once_send_each_payment_to_review_once(payments: Any) -> None:
    first, _ = _worker(payments)
    second, _ = _worker(payments)
    ids = [await _create(payments) for _ in range(30)]
    later = datetime.now(UTC) + LATER

    taken = await asyncio.gather(first.sweep_once(later), second.sweep_once(later))

    assert sum(taken) == 30
    reviews = [e for e in await _outbox_events(payments) if e.type == "fraud.review"]
    assert sorted(e.payload["order"]["payment_id"] for e in reviews) == sorted(ids)


async def test_deadline_reviews_are_sent_to_fraud_until_it_accepts_them(payments: Any) -> None:
    refusing = FakeFraud(status=503)
    worker, _ = _worker(payments, refusing)
    pid = await _create(payments)
    await worker.sweep_once(datetime.now(UTC) + LATER)

    with pytest.raises(TransientError):  # refused: kept for the next round
        await worker.send_once()
    assert [r["payment"]["payment_id"] for r in refusing.sent] == [pid]
    refusing.status = 204
    assert await worker.send_once() == 1
    assert await worker.send_once() == 0
    assert [r["payment"]["payment_id"] for r in refusing.sent] == [pid, pid]


# --------------------------------------------------------------------------- ledger


def _fraud_event(event: msgspec.Struct, order: PaymentOrder) -> Envelope:
    return make_envelope(event, partition_key=order.account_key, correlation_id=order.payment_id)


async def _balances(conn: Any, account_id: str) -> tuple[int, int]:
    row = await conn.fetchrow("SELECT credits_posted - debits_posted AS posted, debits_pending AS pending "
                              "FROM account_totals WHERE id = $1", account_id)
    return int(row["posted"]), int(row["pending"])


async def test_the_ledger_holds_on_the_deadline_and_ignores_frauds_late_approval(ledger: Any) -> None:
    handlers = LedgerHandlers(LedgerStore(), Outbox(4))
    async with ledger.acquire() as conn:
        payer, payee = await _wallet(conn), await _wallet(conn)
        fund = PaymentOrder(payment_id="pay_fund", tenant_id=TENANT, kind="deposit",
                            source_account_id=None, destination_account_id=payer, amount=1_000,
                            currency="EUR")
        order = PaymentOrder(payment_id="pay_1", tenant_id=TENANT, kind="transfer",
                             source_account_id=payer, destination_account_id=payee, amount=300,
                             currency="EUR")
        async with conn.transaction():
            await handlers.on_fraud_events(conn, [_fraud_event(FraudApproved(order=fund), fund)])
        review_id = new_id("rev")
        deadline = FraudReview(order=order, review_id=review_id, reasons=["screening_deadline"])
        async with conn.transaction():
            await handlers.on_fraud_events(conn, [_fraud_event(deadline, order)])
        assert await _balances(conn, payer) == (1_000, 300)

        # fraud's own decision, late: an approval, and (from another copy) a review
        async with conn.transaction():
            await handlers.on_fraud_events(conn, [
                _fraud_event(FraudApproved(order=order), order),
                _fraud_event(FraudReview(order=order, review_id=new_id("rev")), order),
            ])
        assert await _balances(conn, payer) == (1_000, 300)
        assert await _posted_balance(conn, payee) == 0

        # the re-screen's (or a reviewer's) approval names the review: it posts the hold
        async with conn.transaction():
            await handlers.on_fraud_events(
                conn, [_fraud_event(FraudApproved(order=order, review_id=review_id), order)] * 2
            )
        assert await _balances(conn, payer) == (700, 0)
        assert await _posted_balance(conn, payee) == 300
        posts = await conn.fetchval("SELECT count(*) FROM transfers WHERE external_ref = 'pay_1' "
                                    "AND phase IN ('posted', 'post_pending')")
        assert posts == 1


# --------------------------------------------------------------------------- fraud


def _order(payment_id: str, amount: int = 100) -> PaymentOrder:
    return PaymentOrder(payment_id=payment_id, tenant_id=TENANT, kind="transfer",
                        source_account_id="acc_src", destination_account_id="acc_dst",
                        amount=amount, currency="EUR")


def _rescreener(pool: Any, handlers: Any, budget: float = 0.5) -> Rescreener:
    return Rescreener(pool, FraudStore(), handlers, Outbox(4), Guard("test-velocity"),
                      budget=budget, backoff=0.0, backoff_cap=0.0)


async def _open_deadline_reviews(pool: Any, handlers: Any, *orders: PaymentOrder) -> list[str]:
    reviews = [DeadlineReview(id=new_id("rev"), payment=o, created_at=datetime.now(UTC))
               for o in orders]
    async with pool.acquire() as conn:
        # Sent twice (payments retries until it hears back): still one review each.
        await handlers.open_deadline_reviews(conn, reviews, datetime.now(UTC) - LATER)
        await handlers.open_deadline_reviews(conn, reviews, datetime.now(UTC) - LATER)
    return [r.id for r in reviews]


async def test_deadline_reviews_join_the_queue_once_each(fraud: Any) -> None:
    pool, handlers = fraud
    ids = await _open_deadline_reviews(pool, handlers, _order("pay_a"), _order("pay_b"))
    rows = await pool.fetch("SELECT id, status, reasons FROM reviews ORDER BY id")
    assert [(r["id"], r["status"], list(r["reasons"])) for r in rows] == [
        (i, "open", ["screening_deadline"]) for i in sorted(ids)
    ]


async def test_a_rescreen_slower_than_its_budget_is_deferred(fraud: Any) -> None:
    pool, handlers = fraud
    [review_id] = await _open_deadline_reviews(pool, handlers, _order("pay_a"))
    async with pool.acquire() as conn:
        await FraudStore().set_decision_delay_ms(conn, 2_000, datetime.now(UTC))

    assert await _rescreener(pool, handlers, budget=0.2).rescreen_once() == 0

    row = await pool.fetchrow("SELECT status, rescreen_attempts FROM reviews WHERE id = $1", review_id)
    assert (row["status"], row["rescreen_attempts"]) == ("open", 1)
    assert await _outbox_events(pool) == []


async def test_a_rescreen_the_rules_approve_resolves_the_review_as_an_approval(fraud: Any) -> None:
    pool, handlers = fraud
    [review_id] = await _open_deadline_reviews(pool, handlers, _order("pay_a"))

    assert await _rescreener(pool, handlers).rescreen_once() == 1

    row = await pool.fetchrow("SELECT status, decided_by FROM reviews WHERE id = $1", review_id)
    assert (row["status"], row["decided_by"]) == ("approved", "rescreen")
    [event] = await _outbox_events(pool)
    approval = msgspec.convert(event.payload, FraudApproved)
    assert (approval.review_id, approval.reasons) == (review_id, ["rescreen_approved"])


async def test_two_rescreeners_at_once_resolve_each_review_once(fraud: Any) -> None:
    pool, handlers = fraud
    ids = await _open_deadline_reviews(pool, handlers, *(_order(f"pay_{n}") for n in range(20)))

    done = await asyncio.gather(_rescreener(pool, handlers).rescreen_once(),
                                _rescreener(pool, handlers).rescreen_once())

    assert sum(done) == 20
    events = await _outbox_events(pool)
    assert sorted(e.payload["review_id"] for e in events) == sorted(ids)


async def test_a_rescreen_the_rules_decline_resolves_the_review_as_a_decline(fraud: Any) -> None:
    pool, handlers = fraud
    [review_id] = await _open_deadline_reviews(pool, handlers, _order("pay_a", amount=50_000))

    assert await _rescreener(pool, handlers).rescreen_once() == 1

    [event] = await _outbox_events(pool)
    assert (event.type, event.payload["review_id"]) == ("fraud.declined", review_id)
    assert event.payload["reasons"] == ["rescreen_declined", "amount_over_limit"]


async def test_a_rescreen_that_still_says_review_leaves_it_to_a_human(fraud: Any) -> None:
    pool, handlers = fraud
    [review_id] = await _open_deadline_reviews(pool, handlers, _order("pay_a", amount=6_000))

    assert await _rescreener(pool, handlers).rescreen_once() == 1
    assert await _rescreener(pool, handlers).rescreen_once() == 0  # not tried again

    row = await pool.fetchrow("SELECT status, reasons, rescreen_at FROM reviews WHERE id = $1", review_id)
    assert (row["status"], list(row["reasons"]), row["rescreen_at"]) == (
        "open", ["amount_in_review_band"], None
    )
    assert await _outbox_events(pool) == []


async def test_frauds_late_decision_keeps_the_deadlines_review(fraud: Any) -> None:
    pool, handlers = fraud
    [review_id] = await _open_deadline_reviews(pool, handlers, _order("pay_mid", amount=6_000))
    initiated = make_envelope(PaymentInitiated(order=_order("pay_mid", amount=6_000)),
                              partition_key="acc_src", correlation_id="pay_mid")
    async with pool.acquire() as conn, conn.transaction():
        await handlers.on_payments_initiated(conn, [initiated])

    rows = await pool.fetch("SELECT id FROM reviews WHERE payment_id = 'pay_mid'")
    assert [r["id"] for r in rows] == [review_id]
