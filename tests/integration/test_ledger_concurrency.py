"""Many concurrent posters against a few hot accounts, through the ledger's public posting path
(`TransferService`, as `/v1/transfers` runs it) on a real PostgreSQL.

Each poster moves money in random directions between three hot wallets, holds and posts or
voids, all at once over a pool of connections. Every request must end as a transfer or as a
refusal the ledger chose (``insufficient_funds``): no deadlock or serialization error reaches
the caller. Afterwards no update was lost (each balance is the sum of exactly the accepted
transfers), no account is below zero, and `paystream ledger verify` passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from paystream.contracts.api import LegCreate, TransferCreate
from paystream.contracts.ids import new_id
from paystream.ledger.domain import Book, Posted, simple_transfer
from paystream.ledger.store import LedgerStore
from paystream.ledger.transfers import TransferRefused, TransferService
from paystream.ledger.verify import verify_connection

from ._support import waiting_on_a_lock

TENANT = "ten_hot"
POSTERS = 400


async def _wallets(conn: asyncpg.Connection, n: int, *, overdraft: bool = False) -> list[str]:
    return [
        str((await LedgerStore().create_account(
            conn, tenant_id=TENANT, currency="USD", allow_overdraft=overdraft, owner_user_id=None,
            metadata={}, create_key=None,
        ))["id"])
        for _ in range(n)
    ]


async def _bank_and_merchant(pool: asyncpg.Pool) -> tuple[str, str]:
    """A wallet allowed to overdraw (the payer) and one that is not (the merchant)."""
    async with pool.acquire() as conn:
        (bank,) = await _wallets(conn, 1, overdraft=True)
        (merchant,) = await _wallets(conn, 1)
    return bank, merchant


@contextlib.asynccontextmanager
async def _row_held(pool: asyncpg.Pool, account_id: str) -> AsyncIterator[None]:
    """Another transaction holds the account's row (say, a long debit) for the block."""
    async with pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("SELECT 1 FROM accounts WHERE id = $1 FOR NO KEY UPDATE", account_id)
        yield


def _body(ref: str, debit: str, credit: str, amount: int, *, pending: bool = False) -> TransferCreate:
    return TransferCreate(
        external_ref=ref, currency="USD", pending=pending,
        legs=[LegCreate(account_id=debit, direction="debit", amount=amount),
              LegCreate(account_id=credit, direction="credit", amount=amount)],
    )


async def test_hot_accounts_under_concurrent_posters_lose_nothing_and_never_deadlock_a_client(
    make_schema: Any, admin_pool: asyncpg.Pool
) -> None:
    db = await make_schema("ledger", max_size=12)
    service = TransferService(db.pool, LedgerStore())
    async with db.pool.acquire() as conn:
        (bank,) = await _wallets(conn, 1, overdraft=True)
        hot = await _wallets(conn, 3)
    for account in hot:
        await service.create(TENANT, _body(f"seed-{account}", bank, account, 5_000))

    rng = random.Random(7)
    expected: dict[str, int] = {a: 5_000 for a in hot}
    refused: list[str] = []
    lock = asyncio.Lock()

    async def poster(n: int) -> None:
        debit, credit = rng.sample(hot, 2)
        amount = rng.randint(1, 400)
        try:
            if n % 5 == 0:  # a hold, then a partial post or a void
                hold, _ = await service.create(TENANT, _body(f"h-{n}", debit, credit, amount, pending=True))
                if n % 10 == 0:
                    closed = await service.act(TENANT, hold["id"], "void")
                    moved = 0
                else:
                    moved = max(1, amount // 2)
                    closed = await service.act(TENANT, hold["id"], "post", moved)
                assert closed["status"] in ("voided", "posted")
            else:
                await service.create(TENANT, _body(f"t-{n}", debit, credit, amount))
                moved = amount
        except TransferRefused as exc:
            assert exc.code == "insufficient_funds", exc
            refused.append(exc.code)
            return
        async with lock:
            expected[debit] -= moved
            expected[credit] += moved

    await asyncio.gather(*(poster(n) for n in range(POSTERS)))

    rows = await db.pool.fetch(
        "SELECT id, credits_posted - debits_posted AS posted, debits_pending FROM account_totals "
        "WHERE id = ANY($1::text[])", hot,
    )
    balances = {r["id"]: r["posted"] for r in rows}
    assert balances == expected  # no update lost, none applied twice
    assert all(r["debits_pending"] == 0 for r in rows)  # every hold was closed
    assert all(b >= 0 for b in balances.values())
    assert sum(balances.values()) == 15_000
    assert len(refused) < POSTERS  # most went through: the hot accounts really were contended
    async with admin_pool.acquire() as conn:
        report = await verify_connection(conn, db.schema)
    assert report.ok, str(report)


async def test_unrelated_postings_spread_over_the_hash_chains_instead_of_queueing_on_one(
    make_schema: Any, admin_pool: asyncpg.Pool
) -> None:
    """Transfers between disjoint pairs of accounts, all at once: they share no account lock,
    so they must not share one chain lock either; each takes a free chain."""
    db = await make_schema("ledger", max_size=12)
    service = TransferService(db.pool, LedgerStore())
    async with db.pool.acquire() as conn:
        wallets = await _wallets(conn, 24, overdraft=True)
    pairs = list(zip(wallets[::2], wallets[1::2], strict=True))
    for _ in range(5):
        await asyncio.gather(*(service.create(TENANT, _body(f"p-{a}-{b}-{_}", a, b, 10)) for a, b in pairs))
    chains = await db.pool.fetchval("SELECT count(DISTINCT chain) FROM entries")
    assert chains > 1
    async with admin_pool.acquire() as conn:
        report = await verify_connection(conn, db.schema)
    assert report.ok, str(report)
    assert f"in {chains} of 16 chains" in report.checks[0].detail


async def test_paying_into_an_account_does_not_wait_for_its_row_lock(make_schema: Any) -> None:
    """A credit to a wallet cannot break its limit, so it never waits for the wallet's row:
    while another transaction holds the merchant's row (say, a long debit), payments into it
    still post at once (as balance deltas), and the merchant's balance counts them."""
    db = await make_schema("ledger", max_size=6)
    service = TransferService(db.pool, LedgerStore())
    bank, merchant = await _bank_and_merchant(db.pool)
    async with _row_held(db.pool, merchant):
        for n in range(3):
            await asyncio.wait_for(service.create(TENANT, _body(f"in-{n}", bank, merchant, 100)), 5)
        # The merchant paying out would need the lock: it waits until the blocker ends.
        payout = asyncio.create_task(service.create(TENANT, _body("out", merchant, bank, 250)))
        await waiting_on_a_lock(db.pool, "%ledger_lock%")
        assert not payout.done()
    await asyncio.wait_for(payout, 5)
    totals = await db.pool.fetchrow(
        "SELECT credits_posted - debits_posted AS posted FROM account_totals WHERE id = $1", merchant
    )
    assert totals["posted"] == 50


async def test_a_credit_to_a_free_row_is_written_in_place_and_folds_its_deltas(make_schema: Any) -> None:
    """Deltas are only for a row someone else holds: a credit to a free row locks it (without
    waiting) and writes the total in place, folding in the deltas it had collected."""
    db = await make_schema("ledger", max_size=4)
    service = TransferService(db.pool, LedgerStore())
    bank, merchant = await _bank_and_merchant(db.pool)
    async with _row_held(db.pool, merchant):
        await asyncio.wait_for(service.create(TENANT, _body("held-1", bank, merchant, 100)), 5)
    assert await db.pool.fetchval("SELECT count(*) FROM balance_deltas WHERE account_id = $1", merchant) == 1

    await service.create(TENANT, _body("free-1", bank, merchant, 40))

    assert await db.pool.fetchval("SELECT count(*) FROM balance_deltas WHERE account_id = $1", merchant) == 0
    assert await db.pool.fetchval("SELECT credits_posted FROM accounts WHERE id = $1", merchant) == 140


async def test_a_posting_waits_for_a_chain_when_all_sixteen_are_held(
    make_schema: Any, admin_pool: asyncpg.Pool
) -> None:
    """With every chain head held by other transactions, ``ledger_write`` waits for one (it
    does not fail, and does not write unchained entries), then appends after that head."""
    db = await make_schema("ledger", max_size=4)
    service = TransferService(db.pool, LedgerStore())
    async with db.pool.acquire() as conn:
        bank, shop = await _wallets(conn, 2, overdraft=True)
    async with admin_pool.acquire() as holder, holder.transaction():
        held = await holder.fetch(f'SELECT chain FROM "{db.schema}".chain_head ORDER BY chain FOR UPDATE')
        assert len(held) == 16
        posting = asyncio.create_task(service.create(TENANT, _body("waits", bank, shop, 10)))
        await waiting_on_a_lock(db.pool, "%ledger_write%")
        assert not posting.done()
    await asyncio.wait_for(posting, 5)
    chained = await db.pool.fetch("SELECT chain, seq FROM entries ORDER BY id")
    assert len(chained) == 2 and chained[0]["chain"] == chained[1]["chain"]
    assert [r["seq"] for r in chained] == [1, 2]
    async with admin_pool.acquire() as conn:
        report = await verify_connection(conn, db.schema)
    assert report.ok, str(report)


async def test_the_database_refuses_a_balance_delta_against_an_accounts_normal_side(
    make_schema: Any,
) -> None:
    """Deltas skip the row lock because they can only add to the normal side; the database
    holds them to it. Another transaction is spending the payer's 100 (it holds the row,
    uncommitted). A posting whose legs were announced wrongly (the payer's debit given as a
    credit) reads the row without a lock, still sees 100, and would spend it again as a
    delta, past the limit once both commit: its write is refused and nothing moves."""
    db = await make_schema("ledger", max_size=4)
    store = LedgerStore()
    async with db.pool.acquire() as conn:
        (bank,) = await _wallets(conn, 1, overdraft=True)
        payer, shop = await _wallets(conn, 2)
    service = TransferService(db.pool, store)
    await service.create(TENANT, _body("fund", bank, payer, 100))

    async with db.pool.acquire() as blocker:
        spending = blocker.transaction()
        await spending.start()
        await blocker.execute("UPDATE accounts SET debits_posted = debits_posted + 100 WHERE id = $1", payer)
        async with db.pool.acquire() as conn:
            with pytest.raises(asyncpg.CheckViolationError, match="deltas_only_add_on_the_normal_side"):
                async with conn.transaction():
                    lying = [(payer, "credit"), (shop, "credit")]  # the payer is in fact debited
                    accounts = await store.lock_accounts(conn, {payer, shop}, lying)  # type: ignore[arg-type]
                    assert accounts[payer].baseline is not None  # read without a lock
                    book = Book(accounts)
                    assert isinstance(book.transfer(simple_transfer(
                        transfer_id=new_id("trf"), tenant_id=TENANT, external_ref="lie", kind="transfer",
                        debit_account=payer, credit_account=shop, amount=100, currency="USD",
                    )), Posted)  # the stale row shows the 100 as still there
                    await store.write_batch(conn, accounts, book.result, datetime.now(UTC))

        await spending.rollback()  # the ledger as it was, for the check below
    totals = {row["id"]: row["posted"] for row in await db.pool.fetch(
        "SELECT id, credits_posted - debits_posted AS posted FROM account_totals WHERE id = ANY($1)",
        [payer, shop])}
    assert totals == {payer: 100, shop: 0}
    assert await db.pool.fetchval("SELECT count(*) FROM transfers WHERE external_ref = 'lie'") == 0


async def test_a_delta_must_name_its_accounts_real_side(make_schema: Any) -> None:
    """The side a delta names is checked against the account: a delta cannot pass for the
    other side's to get around the check."""
    db = await make_schema("ledger", max_size=2)
    async with db.pool.acquire() as conn:
        (wallet,) = await _wallets(conn, 1)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "INSERT INTO balance_deltas (account_id, normal_balance, debits_posted) VALUES ($1, 'debit', 5)",
                wallet)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO balance_deltas (account_id, normal_balance, credits_posted) VALUES ($1, 'credit', -5)",
                wallet)
        await conn.execute(
            "INSERT INTO balance_deltas (account_id, normal_balance, credits_posted) VALUES ($1, 'credit', 5)",
            wallet)
        assert await conn.fetchval("SELECT credits_posted FROM account_totals WHERE id = $1", wallet) == 5
