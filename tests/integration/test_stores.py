"""Each service's PostgreSQL store, on a real PostgreSQL, connected as the service's own role.

Running as the role (not the superuser that migrated the schema) also proves the role has
every privilege the store needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest

from paystream.contracts.api import Payment
from paystream.contracts.envelope import Envelope, decode, make_envelope
from paystream.contracts.events import (
    FraudApproved,
    FraudReview,
    LedgerPosted,
    LedgerRejected,
    PaymentInitiated,
    PaymentOrder,
    PaymentSucceeded,
)
from paystream.contracts.ids import AccountId, PaymentId, TenantId, new_id
from paystream.contracts.money import Money
from paystream.fraud.domain import default_rules
from paystream.fraud.handlers import FraudHandlers
from paystream.fraud.store import FraudStore
from paystream.fraud.velocity import VelocityCounter
from paystream.gateway.audit import AuditRecord
from paystream.gateway.domain import idempotency_verdict
from paystream.gateway.identity.clients import ClientStore, secret_matches
from paystream.gateway.store import LEASE, IdempotencyStore
from paystream.ledger.domain import (
    BatchResult,
    Posted,
    Rejected,
    TransferRequest,
    post_batch,
    simple_transfer,
)
from paystream.ledger.handlers import LedgerHandlers
from paystream.ledger.store import LedgerStore, account_body
from paystream.notifications.handlers import NotificationHandlers, webhook_body
from paystream.notifications.store import NotificationsStore
from paystream.payments.domain import ExchangeTerms, NewPayment
from paystream.payments.handlers import PaymentHandlers, order_of
from paystream.payments.store import PaymentsStore
from paystream.platform.db import create_pool
from paystream.platform.errors import Conflict, PoisonMessage
from paystream.platform.outbox import Outbox
from paystream.platform.resilience import Guard

from ._support import waiting_on_a_lock

TENANT = "ten_a"
OTHER_TENANT = "ten_b"

RolePool = Callable[[str], Awaitable[Any]]


@pytest.fixture
async def role_db(make_schema: Any) -> AsyncIterator[RolePool]:
    """``await role_db(service)``: (schema, pool connected as the service's role)."""
    pools: list[asyncpg.Pool] = []

    async def open_(service: str) -> Any:
        schema = await make_schema(service)
        pool = await create_pool(
            schema.role_url, min_size=1, max_size=2, application_name="paystream-tests"
        )
        pools.append(pool)
        return schema, pool

    yield open_
    for pool in pools:
        await pool.close()


async def _outbox_events(pool: asyncpg.Pool) -> list[Envelope]:
    rows = await pool.fetch("SELECT body FROM outbox ORDER BY seq")
    return [decode(bytes(row["body"])) for row in rows]


# --------------------------------------------------------------------------- ledger


@pytest.fixture
async def ledger(role_db: RolePool) -> Any:
    _, pool = await role_db("ledger")
    return pool


async def _wallet(conn: asyncpg.Connection, *, overdraft: bool = False, currency: str = "EUR",
                  tenant: str = TENANT, key: str | None = None) -> str:
    row = await LedgerStore().create_account(
        conn, tenant_id=tenant, currency=currency, allow_overdraft=overdraft,
        owner_user_id=None, metadata={}, create_key=key,
    )
    return str(row["id"])


async def _settlement(conn: asyncpg.Connection, currency: str = "EUR") -> str:
    return (await LedgerStore().settlement_ids(conn, [(TENANT, currency)]))[(TENANT, currency)]


def _transfer(
    ref: str, debit: str, credit: str, amount: int, kind: str = "transfer"
) -> TransferRequest:
    return simple_transfer(
        transfer_id=new_id("trf"), tenant_id=TENANT, external_ref=ref, kind=kind,
        debit_account=debit, credit_account=credit, amount=amount, currency="EUR",
    )


async def _post(conn: asyncpg.Connection, *requests: TransferRequest) -> BatchResult:
    """What the ledger consumer does with a batch: lock, decide, write, in one transaction."""
    store = LedgerStore()
    async with conn.transaction():
        ids = {leg.account_id for r in requests for leg in r.legs}
        accounts = await store.lock_accounts(conn, ids)
        result = post_batch(accounts, requests)
        await store.write_batch(conn, accounts, result, datetime.now(UTC))
    return result


async def _posted_balance(conn: asyncpg.Connection, account_id: str) -> int:
    row = await conn.fetchrow(
        "SELECT id, tenant_id, currency, allow_overdraft, lower_limit, owner_user_id, metadata, normal_balance, "
        "debits_posted, credits_posted, debits_pending, credits_pending, created_at "
        "FROM account_totals WHERE id = $1",
        account_id,
    )
    return int(account_body(row)["balance"]["posted"])


async def test_ledger_account_creation_also_makes_the_tenants_settlement_account(
    ledger: Any,
) -> None:
    async with ledger.acquire() as conn:
        wallet = await _wallet(conn)
        row = await LedgerStore().get_account(conn, TENANT, wallet)
        settlement = await LedgerStore().settlement_ids(conn, [(TENANT, "EUR"), (TENANT, "USD")])
        await _wallet(conn)  # a second wallet does not make a second settlement account
        settlements = await conn.fetchval("SELECT count(*) FROM accounts WHERE kind = 'settlement'")

    assert row is not None and row["currency"] == "EUR"
    assert account_body(row)["balance"] == {"posted": 0, "pending": 0, "available": 0}
    assert list(settlement) == [(TENANT, "EUR")]
    assert settlements == 1


async def test_ledger_account_creation_with_a_repeated_create_key_returns_the_first_account(
    ledger: Any,
) -> None:
    async with ledger.acquire() as conn:
        first = await _wallet(conn, key="k1")
        again = await _wallet(conn, key="k1")
        other_tenant = await _wallet(conn, key="k1", tenant=OTHER_TENANT)

    assert again == first
    assert other_tenant != first


async def test_ledger_account_of_another_tenant_is_not_found(ledger: Any) -> None:
    async with ledger.acquire() as conn:
        wallet = await _wallet(conn)
        assert await LedgerStore().get_account(conn, OTHER_TENANT, wallet) is None


async def test_ledger_posting_moves_balances_and_every_transfer_sums_to_zero(ledger: Any) -> None:
    async with ledger.acquire() as conn:
        alice, bob = await _wallet(conn), await _wallet(conn)
        settlement = await _settlement(conn)

        result = await _post(
            conn,
            _transfer("pay_1", settlement, alice, 1_000, kind="deposit"),
            _transfer("pay_2", alice, bob, 300),
        )

        assert [type(o) for o in result.outcomes] == [Posted, Posted]
        assert await _posted_balance(conn, alice) == 700
        assert await _posted_balance(conn, bob) == 300
        assert await _posted_balance(conn, settlement) == 1_000  # a debit-normal account
        per_transfer = await conn.fetch(
            "SELECT transfer_id, count(*) AS legs, "
            "sum(CASE direction WHEN 'debit' THEN amount ELSE -amount END) AS net "
            "FROM entries GROUP BY transfer_id"
        )
        assert sorted((r["legs"], r["net"]) for r in per_transfer) == [(2, 0), (2, 0)]
        # The running totals on each account are exactly the sum of its entries.
        mismatched = await conn.fetchval(
            "SELECT count(*) FROM account_totals a WHERE debits_posted <> "
            "(SELECT coalesce(sum(amount), 0) FROM entries e WHERE e.account_id = a.id "
            " AND direction = 'debit') OR credits_posted <> "
            "(SELECT coalesce(sum(amount), 0) FROM entries e WHERE e.account_id = a.id "
            " AND direction = 'credit')"
        )
        assert mismatched == 0
        entries = await LedgerStore().list_entries(conn, bob, limit=10, before_seq=None)
        assert [(e["external_ref"], e["direction"], e["amount"]) for e in entries] == [
            ("pay_2", "credit", 300)
        ]


async def test_ledger_rejects_an_overdraft_and_remembers_the_rejection(ledger: Any) -> None:
    async with ledger.acquire() as conn:
        alice, bob = await _wallet(conn), await _wallet(conn)
        settlement = await _settlement(conn)
        await _post(conn, _transfer("pay_1", settlement, alice, 100, kind="deposit"))

        result = await _post(conn, _transfer("pay_2", alice, bob, 101))

        [outcome] = result.outcomes
        assert isinstance(outcome, Rejected) and outcome.code == "insufficient_funds"
        assert await _posted_balance(conn, alice) == 100
        assert await _posted_balance(conn, bob) == 0
        assert await conn.fetchval(
            "SELECT count(*) FROM transfers WHERE external_ref = 'pay_2'"
        ) == 0
        assert await conn.fetchval("SELECT code FROM rejections WHERE external_ref = 'pay_2'") == (
            "insufficient_funds"
        )
        decided, _ = await LedgerStore().decisions(conn, [(TENANT, "pay_1"), (TENANT, "pay_2"),
                                                          (TENANT, "pay_3")])
        assert decided == {(TENANT, "pay_1"), (TENANT, "pay_2")}


async def test_ledger_lets_an_overdraft_account_go_below_zero(ledger: Any) -> None:
    async with ledger.acquire() as conn:
        credit_line, bob = await _wallet(conn, overdraft=True), await _wallet(conn)

        result = await _post(conn, _transfer("pay_1", credit_line, bob, 500))

        assert [type(o) for o in result.outcomes] == [Posted]
        assert await _posted_balance(conn, credit_line) == -500


async def test_ledger_database_refuses_a_negative_balance_on_a_no_overdraft_account(
    ledger: Any,
) -> None:
    # The CHECK constraint is the backstop behind the domain rule.
    async with ledger.acquire() as conn:
        alice = await _wallet(conn)
        with pytest.raises(asyncpg.exceptions.CheckViolationError):
            await conn.execute("UPDATE accounts SET debits_posted = 1 WHERE id = $1", alice)


async def test_ledger_database_refuses_a_second_transfer_for_the_same_payment(ledger: Any) -> None:
    async with ledger.acquire() as conn:
        alice, bob = await _wallet(conn, overdraft=True), await _wallet(conn)
        await _post(conn, _transfer("pay_1", alice, bob, 10))

        with pytest.raises(asyncpg.exceptions.UniqueViolationError):
            await _post(conn, _transfer("pay_1", alice, bob, 10))

        assert await _posted_balance(conn, bob) == 10


def _approved(order: PaymentOrder) -> Envelope:
    return make_envelope(FraudApproved(order=order), partition_key=order.account_key,
                         correlation_id=order.payment_id)


async def test_ledger_handler_posts_a_payment_once_however_often_it_is_approved(
    ledger: Any,
) -> None:
    handlers = LedgerHandlers(LedgerStore(), Outbox(4))
    async with ledger.acquire() as conn:
        alice = await _wallet(conn)
        deposit = PaymentOrder(payment_id="pay_1", tenant_id=TENANT, kind="deposit",
                               source_account_id=None, destination_account_id=alice,
                               amount=250, currency="EUR")
        # Distinct envelopes (so the inbox would not catch them), same payment: twice in one
        # batch, then again in a later batch.
        async with conn.transaction():
            await handlers.on_fraud_events(conn, [_approved(deposit), _approved(deposit)])
        async with conn.transaction():
            await handlers.on_fraud_events(conn, [_approved(deposit)])

        assert await _posted_balance(conn, alice) == 250
        assert await conn.fetchval("SELECT count(*) FROM transfers") == 1
        events = await _outbox_events(ledger)
        assert [(e.type, e.payload["payment_id"]) for e in events] == [("ledger.posted", "pay_1")]


async def test_ledger_handler_announces_a_rejection_with_its_reason(ledger: Any) -> None:
    handlers = LedgerHandlers(LedgerStore(), Outbox(4))
    async with ledger.acquire() as conn:
        alice, bob = await _wallet(conn), await _wallet(conn)
        order = PaymentOrder(payment_id="pay_1", tenant_id=TENANT, kind="transfer",
                             source_account_id=alice, destination_account_id=bob,
                             amount=1, currency="EUR")
        async with conn.transaction():
            await handlers.on_fraud_events(conn, [_approved(order)])

    [event] = await _outbox_events(ledger)
    assert event.type == "ledger.rejected"
    assert msgspec.convert(event.payload, LedgerRejected).failure_code == "insufficient_funds"


# --------------------------------------------------------------------------- payments


@pytest.fixture
async def payments(role_db: RolePool) -> Any:
    _, pool = await role_db("payments")
    return pool


def _payment_values(key: str = "idem-1", amount: int = 500) -> NewPayment:
    return NewPayment(
        id=PaymentId(new_id("pay")), tenant_id=TenantId(TENANT), client_id="cli_1", kind="transfer",
        amount=Money(amount, "EUR"), source_account_id=AccountId("acc_src"),
        destination_account_id=AccountId("acc_dst"), description="rent", metadata={"k": "v"},
        idempotency_key=key, created_at=datetime.now(UTC),
    )


def _signal(event: msgspec.Struct, payment_id: str) -> Envelope:
    return make_envelope(event, partition_key="acc_src", correlation_id=payment_id)


def _order(payment: dict[str, Any]) -> PaymentOrder:
    return PaymentOrder(payment_id=payment["id"], tenant_id=TENANT, kind="transfer",
                        source_account_id="acc_src", destination_account_id="acc_dst",
                        amount=payment["amount"], currency="EUR")


async def test_payments_create_writes_payment_timeline_and_outbox_event_together(
    payments: Any,
) -> None:
    handlers = PaymentHandlers(PaymentsStore(), Outbox(4))
    values = _payment_values()
    async with payments.acquire() as conn:
        payment, created = await handlers.create(conn, values, correlation_id="corr-1")
        timeline = await PaymentsStore().timeline(conn, payment["id"])

    assert created
    assert payment["status"] == "processing"
    assert payment["metadata"] == {"k": "v"}
    assert [(t["type"], t["status"]) for t in timeline] == [("payment.created", "processing")]
    [event] = await _outbox_events(payments)
    assert event.type == "payments.initiated"
    assert event.correlation_id == "corr-1"
    assert msgspec.convert(event.payload, PaymentInitiated).order == PaymentOrder(
        payment_id=values.id, tenant_id=TENANT, kind="transfer", source_account_id="acc_src",
        destination_account_id="acc_dst", amount=500, currency="EUR",
    )


async def test_payments_create_publishes_the_order_the_stored_row_makes(payments: Any) -> None:
    # The event is built before the row is written (both go in one statement): it must say
    # what the row says, for a payment across currencies and for a refund too.
    handlers = PaymentHandlers(PaymentsStore(), Outbox(4))
    exchange = replace(_payment_values("idem-x"), amount=Money(1_000, "EUR"), exchange=ExchangeTerms(
        received=Money(1_083, "USD"), rate=Decimal("1.083")))
    plain = _payment_values("idem-p")
    refund = replace(_payment_values("idem-r", 200), kind="refund", source_account_id=AccountId("acc_dst"),
                     destination_account_id=AccountId("acc_src"), refund_of=plain.id)
    async with payments.acquire() as conn:
        for new in (plain, exchange, refund):
            await handlers.create(conn, new, "corr")
        rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM payments")}
    events = await _outbox_events(payments)
    assert len(events) == 3
    for event in events:
        order = msgspec.convert(event.payload, PaymentInitiated).order
        assert order == order_of(rows[order.payment_id])
        assert event.occurred_at == rows[order.payment_id]["created_at"]
    assert {e.payload["order"]["destination_currency"] for e in events} == {None, "USD"}


async def test_payments_create_rolled_back_leaves_neither_payment_nor_outbox_event(
    payments: Any,
) -> None:
    handlers = PaymentHandlers(PaymentsStore(), Outbox(4))
    async with payments.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await handlers.create(conn, _payment_values(), correlation_id="corr-1")
                raise RuntimeError("the caller's transaction fails after the create")

        assert await conn.fetchval("SELECT count(*) FROM payments") == 0
        assert await conn.fetchval("SELECT count(*) FROM payment_events") == 0
    assert await _outbox_events(payments) == []


async def test_payments_create_with_a_used_idempotency_key_returns_the_first_payment(
    payments: Any,
) -> None:
    handlers = PaymentHandlers(PaymentsStore(), Outbox(4))
    async with payments.acquire() as conn:
        first, created = await handlers.create(conn, _payment_values("idem-1", 500), "c1")
        again, created_again = await handlers.create(conn, _payment_values("idem-1", 999), "c2")
        other, created_other = await handlers.create(conn, _payment_values("idem-2", 999), "c3")

    assert (created, created_again, created_other) == (True, False, True)
    assert again == first
    assert other["id"] != first["id"]
    assert len(await _outbox_events(payments)) == 2  # the replay published nothing


async def test_payments_transitions_persist_with_timeline_and_public_events(payments: Any) -> None:
    store, handlers = PaymentsStore(), PaymentHandlers(PaymentsStore(), Outbox(4))
    async with payments.acquire() as conn:
        payment, _ = await handlers.create(conn, _payment_values(), "c1")
        pid, order = payment["id"], _order(payment)
        review_id = new_id("rev")
        for signal in (
            FraudReview(order=order, review_id=review_id),
            FraudApproved(order=order, review_id=review_id),  # the reviewer's approval
            LedgerPosted(payment_id=pid, tenant_id=TENANT, transfer_id=new_id("trf")),
            LedgerRejected(payment_id=pid, tenant_id=TENANT, failure_code="late"),  # ignored
        ):
            async with conn.transaction():
                await handlers.on_outcomes(conn, [_signal(signal, pid)])

        row = await store.get(conn, TENANT, pid)
        timeline = await store.timeline(conn, pid)

    assert row is not None
    assert (row["status"], row["failure_code"]) == ("succeeded", None)
    assert row["updated_at"] > row["created_at"]
    assert [(t["type"], t["status"]) for t in timeline] == [
        ("payment.created", "processing"),
        ("payment.requires_review", "requires_review"),
        ("payment.review_approved", "processing"),
        ("payment.succeeded", "succeeded"),
    ]
    events = await _outbox_events(payments)
    assert [e.type for e in events] == [
        "payments.initiated", "payment.requires_review", "payment.succeeded"
    ]
    assert events[-1].payload["data"]["status"] == "succeeded"


async def test_payments_requires_review_carries_frauds_reasons_and_the_payment_keeps_them(payments: Any) -> None:
    store, handlers = PaymentsStore(), PaymentHandlers(PaymentsStore(), Outbox(4))
    reasons = ["amount_in_review_band", "model_review", "risk:velocity_1m", "risk:counterparty_new"]
    async with payments.acquire() as conn:
        payment, _ = await handlers.create(conn, _payment_values(), "c1")
        assert payment["review_reasons"] is None
        pid, review_id = payment["id"], new_id("rev")
        for signal in (FraudReview(order=_order(payment), review_id=review_id, reasons=reasons),
                       FraudApproved(order=_order(payment), review_id=review_id)):
            async with conn.transaction():
                await handlers.on_outcomes(conn, [_signal(signal, pid)])
        row = await store.get(conn, TENANT, pid)

    assert row is not None and Payment.body(row)["review_reasons"] == reasons
    [requires_review] = [e for e in await _outbox_events(payments) if e.type == "payment.requires_review"]
    assert requires_review.payload["data"]["review_reasons"] == reasons


async def test_payments_ledger_rejection_fails_the_payment_with_its_code(payments: Any) -> None:
    store, handlers = PaymentsStore(), PaymentHandlers(PaymentsStore(), Outbox(4))
    async with payments.acquire() as conn:
        payment, _ = await handlers.create(conn, _payment_values(), "c1")
        pid = payment["id"]
        rejected = LedgerRejected(
            payment_id=pid, tenant_id=TENANT, failure_code="insufficient_funds"
        )
        async with conn.transaction():
            # The same outcome twice in one batch changes the payment once.
            await handlers.on_outcomes(conn, [_signal(rejected, pid), _signal(rejected, pid)])
        row = await store.get(conn, TENANT, pid)
        timeline = await store.timeline(conn, pid)

    assert row is not None
    assert (row["status"], row["failure_code"]) == ("failed", "insufficient_funds")
    assert [t["type"] for t in timeline] == ["payment.created", "payment.failed"]
    assert [e.type for e in await _outbox_events(payments)] == [
        "payments.initiated", "payment.failed"
    ]


async def test_payments_a_refunds_success_locks_its_original_first_so_consumers_never_deadlock(
    make_schema: Any,
) -> None:
    """One consumer holds the original (say, its batch has an outcome for it) and then wants
    the refund; the other applies the refund's success, which adds to the original's
    ``amount_refunded``. The second must take the original before the refund (id order),
    so it waits instead of closing a cycle; before the fix, PostgreSQL aborted one of them
    with a deadlock."""
    pool = (await make_schema("payments", max_size=4)).pool
    handlers = PaymentHandlers(PaymentsStore(), Outbox(4))
    async with pool.acquire() as conn:
        original, _ = await handlers.create(conn, _payment_values("orig", amount=900), "c1")
        refund, _ = await handlers.create(
            conn, replace(_payment_values("refund", amount=300), kind="refund", refund_of=original["id"]), "c2")
    assert original["id"] < refund["id"]
    posted = _signal(LedgerPosted(payment_id=refund["id"], tenant_id=TENANT, transfer_id=new_id("trf")),
                     refund["id"])

    async def apply_success() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await handlers.on_outcomes(conn, [posted])

    async with pool.acquire() as other, other.transaction():
        await other.execute("SELECT 1 FROM payments WHERE id = $1 FOR UPDATE", original["id"])
        success = asyncio.create_task(apply_success())
        await waiting_on_a_lock(pool)
        # The refund is free: the waiting consumer took nothing out of order.
        await asyncio.wait_for(
            other.execute("SELECT 1 FROM payments WHERE id = $1 FOR UPDATE", refund["id"]), 3)
    await asyncio.wait_for(success, 5)

    async with pool.acquire() as conn:
        row = await PaymentsStore().get(conn, TENANT, original["id"])
        done = await PaymentsStore().get(conn, TENANT, refund["id"])
    assert row is not None and done is not None
    assert (done["status"], row["amount_refunded"]) == ("succeeded", 300)


async def test_payments_outcome_for_an_unknown_payment_is_poison_and_changes_nothing(
    payments: Any,
) -> None:
    handlers = PaymentHandlers(PaymentsStore(), Outbox(4))
    async with payments.acquire() as conn:
        with pytest.raises(PoisonMessage):
            async with conn.transaction():
                await handlers.on_outcomes(
                    conn, [_signal(LedgerPosted(payment_id="pay_nope", tenant_id=TENANT,
                                                transfer_id="trf_x"), "pay_nope")]
                )
    assert await _outbox_events(payments) == []


async def test_payments_are_invisible_to_another_tenant(payments: Any) -> None:
    handlers = PaymentHandlers(PaymentsStore(), Outbox(4))
    async with payments.acquire() as conn:
        payment, _ = await handlers.create(conn, _payment_values(), "c1")
        assert await PaymentsStore().get(conn, OTHER_TENANT, payment["id"]) is None
        assert await PaymentsStore().list(
            conn, tenant_id=OTHER_TENANT, user_id=None, account_id=None, status=None,
            before_id=None, limit=10,
        ) == []


# --------------------------------------------------------------------------- fraud


@pytest.fixture
async def fraud(role_db: RolePool, redis_client: Any, uid: str) -> Any:
    _, pool = await role_db("fraud")
    handlers = FraudHandlers(
        store=FraudStore(),
        outbox=Outbox(4),
        rules=default_rules(amount_limit=10_000, review_threshold=5_000, velocity_limit=100),
        velocity=VelocityCounter(redis_client, window_seconds=60, prefix=f"{uid}:velocity"),
        velocity_guard=Guard(f"{uid}-velocity"),
    )
    return pool, handlers


def _initiated(payment_id: str, amount: int, source: str = "acc_src") -> Envelope:
    order = PaymentOrder(payment_id=payment_id, tenant_id=TENANT, kind="transfer",
                         source_account_id=source, destination_account_id="acc_dst",
                         amount=amount, currency="EUR")
    return make_envelope(PaymentInitiated(order=order), partition_key=source,
                         correlation_id=payment_id)


async def test_fraud_decisions_are_stored_with_reasons_and_announced(fraud: Any) -> None:
    pool, handlers = fraud
    async with pool.acquire() as conn, conn.transaction():
        await handlers.on_payments_initiated(conn, [
            _initiated("pay_ok", 100), _initiated("pay_mid", 6_000), _initiated("pay_big", 20_000),
        ])

    decisions = {
        r["payment_id"]: (r["outcome"], list(r["reasons"]))
        for r in await pool.fetch("SELECT payment_id, outcome, reasons FROM decisions")
    }
    assert decisions == {
        "pay_ok": ("approve", []),
        "pay_mid": ("review", ["amount_in_review_band"]),
        "pay_big": ("decline", ["amount_over_limit"]),
    }
    [review] = await pool.fetch("SELECT payment_id, status, amount FROM reviews")
    assert (review["payment_id"], review["status"], review["amount"]) == ("pay_mid", "open", 6_000)
    events = await _outbox_events(pool)
    assert [(e.type, e.payload["order"]["payment_id"]) for e in events] == [
        ("fraud.approved", "pay_ok"), ("fraud.review", "pay_mid"), ("fraud.declined", "pay_big"),
    ]


async def test_fraud_decides_a_payment_once_however_often_it_is_initiated(fraud: Any) -> None:
    pool, handlers = fraud
    async with pool.acquire() as conn:
        async with conn.transaction():
            await handlers.on_payments_initiated(conn, [_initiated("pay_1", 100)])
        async with conn.transaction():
            await handlers.on_payments_initiated(conn, [_initiated("pay_1", 100)])
        assert await FraudStore().decided(conn, ["pay_1", "pay_2"]) == {"pay_1"}

    assert await pool.fetchval("SELECT count(*) FROM decisions") == 1
    assert len(await _outbox_events(pool)) == 1


async def test_fraud_store_keeps_one_decision_per_payment(fraud: Any) -> None:
    pool, _ = fraud
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await FraudStore().add_decisions(conn, [("pay_1", TENANT, "approve", [])], now)
        with pytest.raises(asyncpg.exceptions.UniqueViolationError):
            await FraudStore().add_decisions(conn, [("pay_1", TENANT, "decline", ["x"])], now)
        assert await conn.fetchval("SELECT outcome FROM decisions WHERE payment_id = 'pay_1'") == (
            "approve"
        )


async def test_fraud_review_is_decided_once_and_its_approval_continues_the_payment(
    fraud: Any,
) -> None:
    pool, handlers = fraud
    async with pool.acquire() as conn:
        async with conn.transaction():
            await handlers.on_payments_initiated(conn, [_initiated("pay_mid", 6_000)])
        review_id = await conn.fetchval("SELECT id FROM reviews WHERE payment_id = 'pay_mid'")

        decided = await handlers.decide_review(
            conn, tenant_id=TENANT, review_id=review_id, approve=True, decided_by="usr_1",
            note="ok", correlation_id="corr",
        )
        with pytest.raises(Conflict):
            await handlers.decide_review(
                conn, tenant_id=TENANT, review_id=review_id, approve=False, decided_by="usr_2",
                note=None, correlation_id="corr",
            )
        open_reviews = await FraudStore().list_reviews(
            conn, tenant_id=TENANT, status="open", before_id=None, limit=10
        )

    assert decided["status"] == "approved" and decided["decided_at"] is not None
    assert open_reviews == []
    events = await _outbox_events(pool)
    assert [e.type for e in events] == ["fraud.review", "fraud.approved"]
    approval = msgspec.convert(events[-1].payload, FraudApproved)
    assert (approval.order.payment_id, approval.review_id) == ("pay_mid", review_id)


async def test_fraud_review_of_another_tenant_cannot_be_decided(fraud: Any) -> None:
    pool, handlers = fraud
    async with pool.acquire() as conn:
        async with conn.transaction():
            await handlers.on_payments_initiated(conn, [_initiated("pay_mid", 6_000)])
        review_id = await conn.fetchval("SELECT id FROM reviews")
        assert await FraudStore().decide_review(
            conn, tenant_id=OTHER_TENANT, review_id=review_id, status="declined",
            decided_by="usr_1", note=None, now=datetime.now(UTC),
        ) is None
        assert await conn.fetchval("SELECT status FROM reviews") == "open"


# --------------------------------------------------------------------------- notifications


@pytest.fixture
async def notifications(role_db: RolePool) -> Any:
    _, pool = await role_db("notifications")
    return pool


async def _endpoint(conn: asyncpg.Connection, events: list[str], *, tenant: str = TENANT,
                    key: str | None = None) -> str:
    row, _ = await NotificationsStore().create_endpoint(conn, {
        "id": new_id("whe"), "tenant_id": tenant, "url": "http://127.0.0.1:9/hook",
        "events": events, "secret": "whsec_x", "description": None, "create_key": key,
    })
    return str(row["id"])


def _succeeded(tenant: str = TENANT) -> Envelope:
    return make_envelope(
        PaymentSucceeded(tenant_id=tenant, data={"id": "pay_1", "status": "succeeded"}),
        partition_key="acc_src", correlation_id="corr",
    )


async def test_notifications_endpoint_creation_is_idempotent_on_its_create_key(
    notifications: Any,
) -> None:
    async with notifications.acquire() as conn:
        first = await _endpoint(conn, ["payment.succeeded"], key="k1")
        again = await _endpoint(conn, ["payment.failed"], key="k1")
        other = await _endpoint(conn, ["payment.failed"], key="k2")
    assert again == first != other


async def test_notifications_event_is_queued_once_for_each_subscribed_endpoint_only(
    notifications: Any,
) -> None:
    store, handlers = NotificationsStore(), NotificationHandlers(NotificationsStore())
    async with notifications.acquire() as conn:
        wants_it = await _endpoint(conn, ["payment.succeeded", "payment.failed"])
        await _endpoint(conn, ["payment.failed"])
        await _endpoint(conn, ["payment.succeeded"], tenant=OTHER_TENANT)
        disabled = await _endpoint(conn, ["payment.succeeded"])
        assert await store.disable_endpoint(conn, TENANT, disabled)
        envelope = _succeeded()

        await handlers.on_payment_events(conn, [envelope])
        await handlers.on_payment_events(conn, [envelope])  # a duplicate is ignored

        rows = await conn.fetch(
            "SELECT event_id, endpoint_id, event_type, body, status FROM deliveries"
        )
    assert [(r["event_id"], r["endpoint_id"], r["event_type"], r["status"]) for r in rows] == [
        (envelope.id, wants_it, "payment.succeeded", "pending")
    ]
    assert bytes(rows[0]["body"]) == webhook_body(envelope)


async def test_notifications_due_delivery_is_leased_to_one_claimer(notifications: Any) -> None:
    store, handlers = NotificationsStore(), NotificationHandlers(NotificationsStore())
    async with notifications.acquire() as conn:
        endpoint = await _endpoint(conn, ["payment.succeeded"])
        await handlers.on_payment_events(conn, [_succeeded()])

        [claimed] = await store.claim_due(conn, limit=10, lease_seconds=60)
        assert await store.claim_due(conn, limit=10, lease_seconds=60) == []

    assert (claimed["url"], claimed["secret"], claimed["enabled"], claimed["attempts"]) == (
        "http://127.0.0.1:9/hook", "whsec_x", True, 0
    )
    assert await notifications.fetchval("SELECT endpoint_id FROM deliveries") == endpoint


async def test_notifications_results_schedule_retries_and_settle_deliveries(
    notifications: Any,
) -> None:
    store, handlers = NotificationsStore(), NotificationHandlers(NotificationsStore())
    async with notifications.acquire() as conn:
        for _ in range(3):
            await _endpoint(conn, ["payment.succeeded"])
        await handlers.on_payment_events(conn, [_succeeded()])
        ok, retry, dead = await store.claim_due(conn, limit=10, lease_seconds=60)
        now = datetime.now(UTC)

        await store.record_results(conn, [
            {"id": ok["id"], "status": "delivered", "attempts": 1, "next_at": now,
             "last_status": 200, "last_error": None},
            {"id": retry["id"], "status": "pending", "attempts": 1,
             "next_at": now - timedelta(seconds=1), "last_status": 503, "last_error": None},
            {"id": dead["id"], "status": "dead", "attempts": 1, "next_at": now,
             "last_status": None, "last_error": "refused"},
        ], now)

        [again] = await store.claim_due(conn, limit=10, lease_seconds=60)
        rows = {r["id"]: r for r in await conn.fetch(
            "SELECT id, status, attempts, last_status, last_error, delivered_at FROM deliveries"
        )}

    assert again["id"] == retry["id"] and again["attempts"] == 1
    assert (rows[ok["id"]]["status"], rows[ok["id"]]["last_status"]) == ("delivered", 200)
    assert rows[ok["id"]]["delivered_at"] is not None
    assert (rows[dead["id"]]["status"], rows[dead["id"]]["last_error"]) == ("dead", "refused")
    assert rows[dead["id"]]["delivered_at"] is None
    assert rows[retry["id"]]["status"] == "pending"


# --------------------------------------------------------------------------- gateway


@pytest.fixture
async def gateway(role_db: RolePool) -> Any:
    _, pool = await role_db("gateway")
    return pool


async def test_gateway_idempotency_first_claim_then_in_progress_then_replay(gateway: Any) -> None:
    store, now = IdempotencyStore(), datetime.now(UTC)
    async with gateway.acquire() as conn:
        first = await store.begin(conn, "cli_1", "key-1", "fp-a", now)
        while_running = await store.begin(conn, "cli_1", "key-1", "fp-a", now)
        await store.finish(conn, "cli_1", "key-1", 202, b'{"id": "pay_1"}', "application/json")
        after = await store.begin(conn, "cli_1", "key-1", "fp-a", now)

    assert first is None
    assert while_running is not None
    assert idempotency_verdict(while_running, "fp-a", now) == "in_progress"
    assert after is not None and idempotency_verdict(after, "fp-a", now) == "replay"
    assert (after.status_code, after.response_body, after.response_type) == (
        202, b'{"id": "pay_1"}', "application/json"
    )


async def test_gateway_idempotency_finish_stores_the_answer_and_its_audit_record_together(
    gateway: Any,
) -> None:
    store, now = IdempotencyStore(), datetime.now(UTC)
    record = AuditRecord(actor="cli_1", source="127.0.0.1", action="POST /v1/payments", outcome=202,
                         tenant_id="ten_1", object_id="pay_1", correlation_id="corr-1")
    async with gateway.acquire() as conn:
        await store.begin(conn, "cli_1", "key-a", "fp-a", now)
        await store.finish(conn, "cli_1", "key-a", 202, b'{"id": "pay_1"}', "application/json", record)
        after = await store.begin(conn, "cli_1", "key-a", "fp-a", now)
        audited = await conn.fetch("SELECT actor, action, outcome, object_id, correlation_id "
                                   "FROM audit_log WHERE correlation_id = 'corr-1'")
    assert after is not None and idempotency_verdict(after, "fp-a", now) == "replay"
    assert [tuple(r) for r in audited] == [("cli_1", "POST /v1/payments", 202, "pay_1", "corr-1")]


async def test_gateway_idempotency_finish_whose_audit_record_fails_stores_no_answer(
    gateway: Any,
) -> None:
    store, now = IdempotencyStore(), datetime.now(UTC)
    # outcome NULL breaks the audit_log's NOT NULL: the stored answer must not survive it.
    broken = AuditRecord(actor="cli_1", source="127.0.0.1", action="POST /v1/payments",
                         outcome=None, correlation_id="corr-2")  # type: ignore[arg-type]
    async with gateway.acquire() as conn:
        await store.begin(conn, "cli_1", "key-b", "fp-a", now)
        with pytest.raises(asyncpg.NotNullViolationError):
            await store.finish(conn, "cli_1", "key-b", 202, b"{}", "application/json", broken)
        still = await store.begin(conn, "cli_1", "key-b", "fp-a", now)
        audited = await conn.fetchval("SELECT count(*) FROM audit_log WHERE correlation_id = 'corr-2'")
    assert still is not None and idempotency_verdict(still, "fp-a", now) == "in_progress"
    assert audited == 0


async def test_gateway_idempotency_key_reused_for_another_request_is_a_mismatch(
    gateway: Any,
) -> None:
    store, now = IdempotencyStore(), datetime.now(UTC)
    async with gateway.acquire() as conn:
        await store.begin(conn, "cli_1", "key-1", "fp-a", now)
        stored = await store.begin(conn, "cli_1", "key-1", "fp-b", now)
        other_client = await store.begin(conn, "cli_2", "key-1", "fp-b", now)

    assert stored is not None and idempotency_verdict(stored, "fp-b", now) == "mismatch"
    assert other_client is None  # keys are per client


async def test_gateway_idempotency_expired_lease_can_be_taken_over_once(gateway: Any) -> None:
    store, now = IdempotencyStore(), datetime.now(UTC)
    later = now + LEASE + timedelta(seconds=1)
    async with gateway.acquire() as conn:
        await store.begin(conn, "cli_1", "key-1", "fp-a", now)
        assert not await store.take_over(conn, "cli_1", "key-1", now)  # lease still running
        stored = await store.begin(conn, "cli_1", "key-1", "fp-a", later)
        assert stored is not None and idempotency_verdict(stored, "fp-a", later) == "take_over"

        assert await store.take_over(conn, "cli_1", "key-1", later)
        assert not await store.take_over(conn, "cli_1", "key-1", later)  # someone has it now


async def test_gateway_idempotency_abandoned_key_is_claimed_afresh_but_done_keys_stay(
    gateway: Any,
) -> None:
    store, now = IdempotencyStore(), datetime.now(UTC)
    async with gateway.acquire() as conn:
        await store.begin(conn, "cli_1", "running", "fp-a", now)
        await store.begin(conn, "cli_1", "done", "fp-a", now)
        await store.finish(conn, "cli_1", "done", 201, b"{}", "application/json")

        await store.abandon(conn, "cli_1", "running")
        await store.abandon(conn, "cli_1", "done")

        assert await store.begin(conn, "cli_1", "running", "fp-b", now) is None
        done = await store.begin(conn, "cli_1", "done", "fp-a", now)
        assert done is not None and done.state == "done"


async def test_gateway_idempotency_purge_removes_only_old_finished_keys(gateway: Any) -> None:
    store = IdempotencyStore()
    old, now = datetime.now(UTC) - timedelta(days=2), datetime.now(UTC)
    async with gateway.acquire() as conn:
        await store.begin(conn, "cli_1", "old-done", "fp", old)
        await store.finish(conn, "cli_1", "old-done", 200, b"{}", "application/json")
        await store.begin(conn, "cli_1", "old-running", "fp", old)
        await store.begin(conn, "cli_1", "new-done", "fp", now)
        await store.finish(conn, "cli_1", "new-done", 200, b"{}", "application/json")

        purged = await store.purge(conn, now - timedelta(days=1))
        left = {r["key"] for r in await conn.fetch("SELECT key FROM idempotency_keys")}

    assert purged == 1
    assert left == {"old-running", "new-done"}


async def test_gateway_client_secret_is_stored_only_as_a_hash(gateway: Any) -> None:
    store = ClientStore()
    async with gateway.acquire() as conn:
        row, secret = await store.create_client(
            conn, tenant_id=TENANT, name="app", scopes=["payments:write", "payments:read",
                                                       "payments:read"]
        )
        stored = await store.get_client(conn, row["id"])

    assert stored is not None
    assert list(stored["scopes"]) == ["payments:read", "payments:write"]
    assert secret not in stored["secret_hash"]
    assert secret_matches(secret, stored["secret_hash"])
    assert not secret_matches(secret + "x", stored["secret_hash"])


async def test_rotating_keys_retires_the_old_ones_once_their_tokens_have_expired(make_schema: Any) -> None:
    from paystream.gateway.identity.keys import ALGORITHM, KeyStore, new_signing_key

    db = await make_schema("gateway")
    store = KeyStore()
    async with db.pool.acquire() as conn:
        first, pem, jwk = new_signing_key()
        await store.add_key(conn, kid=first, algorithm=ALGORITHM, private_pem=pem, public_jwk=jwk)
        second, pem, jwk = new_signing_key()
        await store.rotate(conn, kid=second, algorithm=ALGORITHM, private_pem=pem, public_jwk=jwk,
                           verify_for_seconds=900)
        # Both verify while tokens of the first may still be alive; the newest signs.
        assert [r["kid"] for r in await store.active_keys(conn)] == [first, second]
        third, pem, jwk = new_signing_key()
        await store.rotate(conn, kid=third, algorithm=ALGORITHM, private_pem=pem, public_jwk=jwk,
                           verify_for_seconds=0)
        # With nothing left to verify, the earlier keys are gone at once.
        assert [r["kid"] for r in await store.active_keys(conn)] == [third]
