"""The ledger's hash chain on a real PostgreSQL, and `paystream ledger verify` catching tampering.

Transfers are posted through the store's own path, connected as the ledger's role. The
tampering is done as the superuser with the immutability triggers switched off (replica
mode), which is exactly what the chain exists to catch.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from paystream.contracts.ids import new_id
from paystream.ledger.chain import GENESIS, EntryFields, entry_hash
from paystream.ledger.domain import TransferRequest, post_batch, simple_transfer
from paystream.ledger.store import LedgerStore
from paystream.ledger.verify import VerifyReport, verify_connection
from paystream.platform import migrations
from paystream.platform.db import create_pool
from tests.conftest import with_credentials

TENANT = "ten_a"


def _transfer(ref: str, debit: str, credit: str, amount: int) -> TransferRequest:
    return simple_transfer(
        transfer_id=new_id("trf"), tenant_id=TENANT, external_ref=ref, kind="transfer",
        debit_account=debit, credit_account=credit, amount=amount, currency="EUR",
    )


async def _post(conn: asyncpg.Connection, *requests: TransferRequest) -> None:
    """What the ledger consumer does with a batch: lock, decide, write, in one transaction."""
    store = LedgerStore()
    async with conn.transaction():
        accounts = await store.lock_accounts(conn, {leg.account_id for r in requests for leg in r.legs})
        await store.write_batch(conn, accounts, post_batch(accounts, requests), datetime.now(UTC))


@pytest.fixture
async def ledger(make_schema: Any) -> AsyncIterator[Any]:
    """A ledger schema with three batches posted by the ledger's role: (schema, accounts)."""
    db = await make_schema("ledger")
    pool = await create_pool(db.role_url, min_size=1, max_size=1, application_name="paystream-tests")
    try:
        conn = await pool.acquire()
        store = LedgerStore()
        wallets = []
        for _ in range(2):
            row = await store.create_account(
                conn, tenant_id=TENANT, currency="EUR", allow_overdraft=False,
                owner_user_id=None, metadata={}, create_key=None,
            )
            wallets.append(row["id"])
        alice, bob = wallets
        settlement = (await store.settlement_ids(conn, [(TENANT, "EUR")]))[(TENANT, "EUR")]
        await _post(conn, _transfer("pay_1", settlement, alice, 1_000), _transfer("pay_2", alice, bob, 300))
        await _post(conn, _transfer("pay_3", bob, alice, 100))
        await _post(conn, _transfer("pay_4", alice, bob, 50), _transfer("pay_5", alice, bob, 5_000))
        await pool.release(conn)
    finally:
        await pool.close()
    yield db, {"alice": alice, "bob": bob, "settlement": settlement}


async def _verify(admin_pool: asyncpg.Pool, schema: str) -> VerifyReport:
    async with admin_pool.acquire() as conn:
        return await verify_connection(conn, schema)


async def _tamper(postgres_url: str, schema: str, statement: str, *args: Any) -> None:
    """Run ``statement`` as the superuser with every trigger off (replica mode)."""
    conn = await asyncpg.connect(postgres_url, server_settings={"search_path": schema})
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(statement, *args)
    finally:
        await conn.close()


def _check(report: VerifyReport, name: str) -> Any:
    return next(c for c in report.checks if c.name == name)


async def test_posted_history_is_chained_gaplessly_and_verifies(ledger: Any, admin_pool: asyncpg.Pool) -> None:
    db, _ = ledger
    rows = await db.pool.fetch("SELECT id, seq FROM entries ORDER BY seq")
    head = await db.pool.fetchrow("SELECT seq, hash FROM chain_head WHERE chain = 0")

    assert [r["seq"] for r in rows] == list(range(1, 9))  # pay_5 was refused: 4 transfers posted
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert head["seq"] == 8
    report = await _verify(admin_pool, db.schema)
    assert report.ok, str(report)


async def test_the_servers_chaining_is_the_python_encoding_byte_for_byte(
    make_schema: Any, admin_pool: asyncpg.Pool
) -> None:
    """``ledger_write`` (007) hashes entries in SQL; each stored hash must be what
    `paystream.ledger.chain.entry_hash` gives, also for text that is not ASCII."""
    db = await make_schema("ledger")
    async with admin_pool.acquire() as conn:
        await conn.execute(
            f'INSERT INTO "{db.schema}".accounts (id, tenant_id, currency, kind, normal_balance, '
            "allow_overdraft, credits_posted) VALUES ('acc_ünïcødé_€', $1, 'EUR', 'wallet', 'credit', "
            "true, 0), ('acc_plain', $1, 'EUR', 'wallet', 'credit', false, 500)", TENANT)
    role = await asyncpg.connect(db.role_url)
    try:
        await _post(role, _transfer("pay_1", "acc_plain", "acc_ünïcødé_€", 123),
                    _transfer("pay_2", "acc_plain", "acc_ünïcødé_€", 77))
        rows = await role.fetch("SELECT * FROM entries ORDER BY chain, seq")
    finally:
        await role.close()
    assert len(rows) == 4
    prev = GENESIS
    for row in rows:
        fields = EntryFields(id=row["id"], transfer_id=row["transfer_id"], account_id=row["account_id"],
                             direction=row["direction"], amount=row["amount"], currency=row["currency"],
                             created_at=row["created_at"])
        assert bytes(row["prev_hash"]) == prev
        assert bytes(row["hash"]) == entry_hash(prev, row["seq"], fields)
        prev = bytes(row["hash"])


async def test_a_changed_amount_is_named(ledger: Any, admin_pool: asyncpg.Pool, postgres_url: str) -> None:
    db, _ = ledger
    victim = await db.pool.fetchval("SELECT id FROM entries WHERE seq = 3")
    await _tamper(postgres_url, db.schema, "UPDATE entries SET amount = amount + 1 WHERE id = $1", victim)

    report = await _verify(admin_pool, db.schema)
    assert not report.ok
    chain = _check(report, "hash chain intact")
    assert not chain.ok and chain.detail.startswith(f"entry {victim} (seq 3): hash does not match")
    assert not _check(report, "transfers sum to zero").ok


async def test_a_change_behind_disabled_triggers_with_rehash_of_that_entry_alone_is_caught(
    ledger: Any, admin_pool: asyncpg.Pool, postgres_url: str
) -> None:
    # Recomputing the tampered entry's own hash is not enough: the next entry's prev_hash breaks.
    db, _ = ledger
    victim = await db.pool.fetchval("SELECT id FROM entries WHERE seq = 2")
    await _tamper(
        postgres_url, db.schema,
        "UPDATE entries SET amount = 999, hash = chain_entry_hash(prev_hash, seq, id, transfer_id, "
        "account_id, direction, 999, currency, created_at) WHERE id = $1", victim,
    )
    chain = _check(await _verify(admin_pool, db.schema), "hash chain intact")
    assert not chain.ok and "(seq 3): prev_hash does not link" in chain.detail


async def test_a_deleted_entry_is_named(ledger: Any, admin_pool: asyncpg.Pool, postgres_url: str) -> None:
    db, _ = ledger
    after = await db.pool.fetchval("SELECT id FROM entries WHERE seq = 5")
    await _tamper(postgres_url, db.schema, "DELETE FROM entries WHERE seq = 4")

    report = await _verify(admin_pool, db.schema)
    chain = _check(report, "hash chain intact")
    assert not chain.ok and chain.detail.startswith(f"entry {after} (seq 5): expected seq 4")
    assert not _check(report, "transfers sum to zero").ok
    assert not _check(report, "balances equal their entries").ok


async def test_a_deleted_last_entry_is_caught_by_the_head(
    ledger: Any, admin_pool: asyncpg.Pool, postgres_url: str
) -> None:
    db, _ = ledger
    await _tamper(postgres_url, db.schema, "DELETE FROM entries WHERE seq = 8")
    chain = _check(await _verify(admin_pool, db.schema), "hash chain intact")
    assert not chain.ok and "chain_head (seq 8) does not match the last entry (seq 7)" in chain.detail


async def test_a_changed_balance_is_named(ledger: Any, admin_pool: asyncpg.Pool, postgres_url: str) -> None:
    db, accounts = ledger
    await _tamper(postgres_url, db.schema,
                  "UPDATE accounts SET credits_posted = credits_posted + 100 WHERE id = $1", accounts["bob"])

    report = await _verify(admin_pool, db.schema)
    balances = _check(report, "balances equal their entries")
    assert not balances.ok and f"first {accounts['bob']}:" in balances.detail
    assert _check(report, "hash chain intact").ok


async def test_a_forbidden_overdraft_is_named(ledger: Any, admin_pool: asyncpg.Pool, postgres_url: str) -> None:
    db, accounts = ledger
    await _tamper(postgres_url, db.schema, "ALTER TABLE accounts DROP CONSTRAINT within_lower_limit")
    await _tamper(postgres_url, db.schema,
                  "UPDATE accounts SET debits_posted = debits_posted + 10000 WHERE id = $1", accounts["alice"])
    overdraft = _check(await _verify(admin_pool, db.schema), "no forbidden overdraft")
    assert not overdraft.ok and f"first {accounts['alice']}:" in overdraft.detail


async def test_an_entry_written_around_the_store_is_reported_unchained(
    ledger: Any, admin_pool: asyncpg.Pool
) -> None:
    db, accounts = ledger
    transfer = await db.pool.fetchval("SELECT transfer_id FROM entries WHERE seq = 1")
    entry = await db.pool.fetchval(
        "INSERT INTO entries (transfer_id, account_id, direction, amount, currency) "
        "VALUES ($1, $2, 'debit', 1, 'EUR') RETURNING id", transfer, accounts["alice"],
    )
    chain = _check(await _verify(admin_pool, db.schema), "hash chain intact")
    assert not chain.ok and chain.detail.startswith(f"entry {entry} is not chained")


async def test_migration_002_chains_existing_rows_the_way_the_store_does(
    postgres_url: str, admin_pool: asyncpg.Pool, uid: str, drop_schema_after: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ledger with history from before the chain: 002 chains it, in SQL, and the store
    (``ledger_write`` of 007) carries on from its head; verify recomputes it all in Python."""
    schema = f"{uid}_ledger"
    drop_schema_after(schema)
    full = migrations.migrations_for
    monkeypatch.setattr(migrations, "migrations_for",
                        lambda service: [m for m in full(service) if m.source != "ledger" or m.version < 2])
    async with admin_pool.acquire() as conn:
        await migrations.migrate(conn, service="ledger", schema=schema, password="pw-one")
        await conn.execute(
            f"""
            SET search_path TO "{schema}";
            INSERT INTO accounts (id, tenant_id, currency, kind, normal_balance, allow_overdraft)
            VALUES ('acc_a', '{TENANT}', 'EUR', 'settlement', 'debit', true),
                   ('acc_b', '{TENANT}', 'EUR', 'wallet', 'credit', false);
            INSERT INTO transfers (id, tenant_id, external_ref, kind, amount, currency)
            VALUES ('trf_1', '{TENANT}', 'pay_1', 'deposit', 5, 'EUR'),
                   ('trf_2', '{TENANT}', 'pay_2', 'deposit', 7, 'EUR');
            INSERT INTO entries (transfer_id, account_id, direction, amount, currency, created_at)
            VALUES ('trf_2', 'acc_a', 'debit', 7, 'EUR', '2026-01-02 03:04:05.123456+00'),
                   ('trf_2', 'acc_b', 'credit', 7, 'EUR', '2026-01-02 03:04:05.123456+00'),
                   ('trf_1', 'acc_a', 'debit', 5, 'EUR', '2026-01-01 00:00:00+00'),
                   ('trf_1', 'acc_b', 'credit', 5, 'EUR', '2026-01-01 00:00:00+00');
            UPDATE accounts SET debits_posted = 12 WHERE id = 'acc_a';
            UPDATE accounts SET credits_posted = 12 WHERE id = 'acc_b';
            RESET search_path;
            """
        )
        monkeypatch.setattr(migrations, "migrations_for", full)
        applied = await migrations.migrate(conn, service="ledger", schema=schema, password="pw-one")
    assert applied == ["ledger/002_chain", "ledger/003_checkpoints", "ledger/004_holds",
                       "ledger/005_chains", "ledger/006_balance_deltas", "ledger/007_posting_calls"]

    async with admin_pool.acquire() as conn:
        chained = await conn.fetch(f'SELECT transfer_id, seq FROM "{schema}".entries ORDER BY seq')
        assert [(r["transfer_id"], r["seq"]) for r in chained] == [
            ("trf_1", 1), ("trf_1", 2), ("trf_2", 3), ("trf_2", 4)]  # by created_at, then id
        report = await verify_connection(conn, schema)
        assert report.ok, str(report)

    role = await asyncpg.connect(with_credentials(postgres_url, migrations.role_name(schema), "pw-one"))
    try:
        await _post(role, _transfer("pay_3", "acc_b", "acc_a", 4))
    finally:
        await role.close()
    async with admin_pool.acquire() as conn:
        report = await verify_connection(conn, schema)
        assert report.ok, str(report)
        assert await conn.fetchval(f'SELECT seq FROM "{schema}".chain_head WHERE chain = 0') == 6


async def test_migration_002_on_an_empty_ledger_starts_at_genesis(make_schema: Any) -> None:
    db = await make_schema("ledger")
    head = await db.pool.fetchrow("SELECT seq, hash FROM chain_head WHERE chain = 0")
    assert (head["seq"], bytes(head["hash"])) == (0, bytes(32))


async def test_signed_checkpoints_catch_a_chain_rewritten_from_scratch(
    ledger: Any, admin_pool: asyncpg.Pool, postgres_url: str
) -> None:
    db, _ = ledger
    key = Ed25519PrivateKey.generate()
    async with admin_pool.acquire() as conn:
        report = await verify_connection(conn, db.schema, key=key, sign=True, every=3)
        assert report.ok, str(report)
        assert _check(report, "checkpoints signed").detail.startswith("3 new, last at seq 8")
        assert [r["seq"] for r in await conn.fetch(f'SELECT seq FROM "{db.schema}".checkpoints ORDER BY seq')] \
            == [3, 6, 8]
        again = await verify_connection(conn, db.schema, key=key, sign=True, every=3)
        assert again.ok and _check(again, "checkpoints signed").detail == "none due"
        assert not _check(await verify_connection(conn, db.schema, key=Ed25519PrivateKey.generate()),
                          "checkpoints match the chain").ok

    # Change an entry, then rebuild the whole chain so every hash and link recomputes.
    await _tamper(
        postgres_url, db.schema,
        "UPDATE entries SET amount = amount + 1 WHERE seq = 2; "
        "UPDATE entries SET seq = NULL, prev_hash = NULL, hash = NULL; "
        "UPDATE chain_head SET seq = 0, hash = decode(repeat('00', 32), 'hex'); "
        "SELECT chain_unchained_entries();",
    )
    async with admin_pool.acquire() as conn:
        report = await verify_connection(conn, db.schema, key=key, sign=True, every=3)
    assert _check(report, "hash chain intact").ok
    points = _check(report, "checkpoints match the chain")
    assert not points.ok and "checkpoint at seq 3 does not match the chain" in points.detail
    assert _check(report, "checkpoints signed").detail.startswith("none:")


async def _cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paystream", "ledger", "verify", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_the_command_exits_0_when_clean_and_1_naming_the_broken_entry(
    ledger: Any, postgres_url: str, tmp_path: Path
) -> None:
    db, _ = ledger
    (tmp_path / "stack.json").write_text(json.dumps({"postgres_url": postgres_url}))
    code, out = await _cli("--home", str(tmp_path), "--schema", db.schema)
    assert code == 0, out
    assert "Ledger verification" in out and "8 entries chained" in out
    assert (tmp_path / "ledger-checkpoint-key.pem").exists() and "1 new, last at seq 8" in out

    victim = await db.pool.fetchval("SELECT id FROM entries WHERE seq = 2")
    await _tamper(postgres_url, db.schema, "UPDATE entries SET currency = 'USD' WHERE id = $1", victim)
    code, out = await _cli("--database-url", postgres_url, "--schema", db.schema,
                           "--key", str(tmp_path / "ledger-checkpoint-key.pem"), "--no-sign")
    assert code == 1, out
    assert f"entry {victim} (seq 2)" in out and "FAILED" in out
