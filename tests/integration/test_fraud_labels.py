"""Training labels on a real PostgreSQL: reviewers' decisions and fraud reports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from paystream.contracts.envelope import make_envelope
from paystream.contracts.events import PaymentInitiated, PaymentOrder
from paystream.fraud.domain import default_rules
from paystream.fraud.handlers import FraudHandlers
from paystream.fraud.store import FraudStore
from paystream.fraud.velocity import VelocityCounter
from paystream.platform.db import create_pool
from paystream.platform.errors import NotFound
from paystream.platform.outbox import Outbox
from paystream.platform.resilience import Guard

TENANT, OTHER_TENANT = "ten_a", "ten_b"


@pytest.fixture
async def fraud(make_schema: Any, redis_client: Any, uid: str) -> AsyncIterator[tuple[asyncpg.Pool, FraudHandlers]]:
    schema = await make_schema("fraud")
    pool = await create_pool(schema.role_url, min_size=1, max_size=2, application_name="paystream-tests")
    handlers = FraudHandlers(
        store=FraudStore(), outbox=Outbox(4),
        rules=default_rules(amount_limit=10_000, review_threshold=5_000, velocity_limit=100),
        velocity=VelocityCounter(redis_client, window_seconds=60, prefix=f"{uid}:velocity"),
        velocity_guard=Guard(f"{uid}-velocity"),
    )
    yield pool, handlers
    await pool.close()


async def _screen(pool: asyncpg.Pool, handlers: FraudHandlers, payment_id: str, amount: int) -> None:
    order = PaymentOrder(payment_id=payment_id, tenant_id=TENANT, kind="transfer", source_account_id="acc_s",
                         destination_account_id="acc_d", amount=amount, currency="USD")
    async with pool.acquire() as conn, conn.transaction():
        await handlers.on_payments_initiated(conn, [make_envelope(PaymentInitiated(order=order),
                                                                  partition_key="acc_s", correlation_id="c")])


async def _labels(pool: asyncpg.Pool) -> dict[tuple[str, str], int]:
    rows = await pool.fetch("SELECT payment_id, source, label FROM labels")
    return {(r["payment_id"], r["source"]): r["label"] for r in rows}


async def test_a_reviewers_decline_and_approval_are_stored_as_labels(fraud: Any) -> None:
    pool, handlers = fraud
    await _screen(pool, handlers, "pay_bad", 6_000)
    await _screen(pool, handlers, "pay_fine", 7_000)
    async with pool.acquire() as conn:
        for payment_id, approve in (("pay_bad", False), ("pay_fine", True)):
            review_id = await conn.fetchval("SELECT id FROM reviews WHERE payment_id = $1", payment_id)
            await handlers.decide_review(conn, tenant_id=TENANT, review_id=review_id, approve=approve,
                                         decided_by="usr_1", note=None, correlation_id="c")
    assert await _labels(pool) == {("pay_bad", "review"): 1, ("pay_fine", "review"): 0}


async def test_a_fraud_report_is_a_label_and_a_repeat_returns_the_first(fraud: Any) -> None:
    pool, handlers = fraud
    await _screen(pool, handlers, "pay_1", 100)
    async with pool.acquire() as conn:
        first, created = await handlers.report_fraud(conn, tenant_id=TENANT, payment_id="pay_1",
                                                     reason="chargeback", note="issuer", reported_by="cli_1")
        again, created_again = await handlers.report_fraud(conn, tenant_id=TENANT, payment_id="pay_1",
                                                           reason="scam", note=None, reported_by="cli_1")
    assert (created, created_again) == (True, False)
    assert again == first and first["reason"] == "chargeback"
    assert await _labels(pool) == {("pay_1", "report"): 1}


async def test_a_fraud_report_for_an_unknown_or_foreign_payment_is_not_found(fraud: Any) -> None:
    pool, handlers = fraud
    await _screen(pool, handlers, "pay_1", 100)
    async with pool.acquire() as conn:
        for tenant, payment_id in ((TENANT, "pay_nope"), (OTHER_TENANT, "pay_1")):
            with pytest.raises(NotFound):
                await handlers.report_fraud(conn, tenant_id=tenant, payment_id=payment_id, reason="scam",
                                            note=None, reported_by="cli_1")
    assert await _labels(pool) == {}
