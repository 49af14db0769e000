"""The ledger consumer's posting of plain transfers, on a real PostgreSQL: which payments
were decided and the accounts' locks come in one statement
(`LedgerStore.lock_accounts_with_decisions`), and that statement still refuses a payment
decided before and still takes its locks in id order."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from paystream.contracts.envelope import Envelope, decode, make_envelope
from paystream.contracts.events import FraudApproved, PaymentOrder
from paystream.ledger.handlers import LedgerHandlers
from paystream.ledger.store import LedgerStore
from paystream.platform.outbox import Outbox

from ._support import waiting_on_a_lock

TENANT = "ten_post"


class _CountingStore(LedgerStore):
    """The ledger's store, counting the calls of the lookups a plain batch should not make."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def decisions(self, conn: asyncpg.Connection, refs: Any) -> Any:
        self.calls.append("decisions")
        return await super().decisions(conn, refs)

    async def lock_accounts(self, conn: asyncpg.Connection, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("lock_accounts")
        return await super().lock_accounts(conn, *args, **kwargs)

    async def lock_accounts_with_decisions(self, conn: asyncpg.Connection, *args: Any) -> Any:
        self.calls.append("lock_accounts_with_decisions")
        return await super().lock_accounts_with_decisions(conn, *args)


async def _wallets(pool: asyncpg.Pool, n: int) -> list[str]:
    store = LedgerStore()
    async with pool.acquire() as conn:
        ids = [str((await store.create_account(
            conn, tenant_id=TENANT, currency="EUR", allow_overdraft=False, owner_user_id=None,
            metadata={}, create_key=None))["id"]) for _ in range(n)]
    return sorted(ids)


def _approved(payment_id: str, source: str | None, destination: str, amount: int,
              kind: str = "transfer") -> Envelope:
    order = PaymentOrder(payment_id=payment_id, tenant_id=TENANT, kind=kind,  # type: ignore[arg-type]
                         source_account_id=source, destination_account_id=destination,
                         amount=amount, currency="EUR")
    return make_envelope(FraudApproved(order=order), partition_key=destination, correlation_id=payment_id)


async def _apply(pool: asyncpg.Pool, handlers: LedgerHandlers, *envelopes: Envelope) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await handlers.on_fraud_events(conn, list(envelopes))


async def _fund(pool: asyncpg.Pool, account: str, amount: int) -> None:
    await _apply(pool, LedgerHandlers(LedgerStore(), Outbox(4)), _approved(f"dep_{account}", None, account, amount,
                                                                          kind="deposit"))


async def _outbox(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    rows = await pool.fetch("SELECT body FROM outbox ORDER BY seq")
    return [(e.type, e.payload["payment_id"]) for e in (decode(bytes(r["body"])) for r in rows)]


async def test_a_plain_batch_is_decided_and_locked_in_one_statement(make_schema: Any) -> None:
    db = await make_schema("ledger")
    alice, bob = await _wallets(db.pool, 2)
    await _fund(db.pool, alice, 100)
    store = _CountingStore()
    await _apply(db.pool, LedgerHandlers(store, Outbox(4)), _approved("pay_1", alice, bob, 30))
    assert store.calls == ["lock_accounts_with_decisions"]
    assert await db.pool.fetchval("SELECT credits_posted FROM account_totals WHERE id = $1", bob) == 30


async def test_a_plain_payment_approved_twice_posts_once(make_schema: Any) -> None:
    db = await make_schema("ledger")
    alice, bob = await _wallets(db.pool, 2)
    await _fund(db.pool, alice, 100)
    await db.pool.execute("DELETE FROM outbox")
    handlers = LedgerHandlers(_CountingStore(), Outbox(4))
    # Distinct envelopes (the inbox would not catch them), one payment: twice in one batch,
    # then again in a later batch.
    await _apply(db.pool, handlers, _approved("pay_1", alice, bob, 30), _approved("pay_1", alice, bob, 30))
    await _apply(db.pool, handlers, _approved("pay_1", alice, bob, 30))
    assert await db.pool.fetchval("SELECT count(*) FROM transfers WHERE external_ref = 'pay_1'") == 1
    assert await db.pool.fetchval("SELECT credits_posted FROM account_totals WHERE id = $1", bob) == 30
    assert await _outbox(db.pool) == [("ledger.posted", "pay_1")]


async def test_a_refused_plain_payment_stays_refused_when_approved_again(make_schema: Any) -> None:
    db = await make_schema("ledger")
    alice, bob = await _wallets(db.pool, 2)
    handlers = LedgerHandlers(_CountingStore(), Outbox(4))
    await _apply(db.pool, handlers, _approved("pay_1", alice, bob, 30))  # alice has nothing yet
    await _fund(db.pool, alice, 100)
    await db.pool.execute("DELETE FROM outbox")
    await _apply(db.pool, handlers, _approved("pay_1", alice, bob, 30))
    assert await db.pool.fetchval("SELECT count(*) FROM transfers WHERE external_ref = 'pay_1'") == 0
    assert await db.pool.fetchval("SELECT code FROM rejections WHERE external_ref = 'pay_1'") == "insufficient_funds"
    assert await _outbox(db.pool) == []


async def test_the_one_statement_reports_exactly_the_decided_refs(make_schema: Any) -> None:
    db = await make_schema("ledger")
    alice, bob = await _wallets(db.pool, 2)
    await _fund(db.pool, alice, 100)
    handlers = LedgerHandlers(LedgerStore(), Outbox(4))
    await _apply(db.pool, handlers, _approved("pay_posted", alice, bob, 30), _approved("pay_refused", bob, alice, 999))
    refs = [(TENANT, "pay_posted"), (TENANT, "pay_refused"), (TENANT, "pay_new"), ("ten_other", "pay_posted")]
    async with db.pool.acquire() as conn, conn.transaction():
        decided, accounts = await LedgerStore().lock_accounts_with_decisions(
            conn, refs, [alice, bob], [(alice, "debit"), (bob, "credit")])
    assert decided == {(TENANT, "pay_posted"), (TENANT, "pay_refused")}
    assert sorted(accounts) == [alice, bob]
    assert (accounts[alice].credits_posted, accounts[alice].debits_posted) == (100, 30)


async def test_the_one_statement_locks_the_accounts_in_id_order(make_schema: Any) -> None:
    """With the higher id held elsewhere, the statement holds the lower one and waits for
    the higher: it never holds the higher while waiting for a lower, so no two postings wait
    for each other."""
    db = await make_schema("ledger", max_size=4)
    low, high = await _wallets(db.pool, 2)
    async with db.pool.acquire() as blocker, db.pool.acquire() as conn, conn.transaction():
        held = blocker.transaction()
        await held.start()
        await blocker.execute("SELECT 1 FROM accounts WHERE id = $1 FOR NO KEY UPDATE", high)
        locking = asyncio.create_task(LedgerStore().lock_accounts_with_decisions(
            conn, [(TENANT, "pay_1")], [high, low], [(high, "debit"), (low, "debit")]))
        await waiting_on_a_lock(db.pool, "%ledger_lock%")
        async with db.pool.acquire() as probe, probe.transaction():
            with pytest.raises(asyncpg.exceptions.LockNotAvailableError):
                await probe.execute("SELECT 1 FROM accounts WHERE id = $1 FOR NO KEY UPDATE NOWAIT", low)
        assert not locking.done()
        await held.rollback()
        decided, accounts = await asyncio.wait_for(locking, 5)
    assert decided == set()
    assert sorted(accounts) == [low, high]
