"""Migrations and the per-service roles they create, on a real PostgreSQL.

Each service owns one schema and logs in as one role that can touch that schema's data
and nothing else; ledger history cannot be rewritten, not even by the ledger.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from paystream.contracts.topology import SERVICES
from paystream.platform.migrations import migrate, migrations_for, role_name


async def _tables(pool: asyncpg.Pool, schema: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", schema
    )
    return [row["tablename"] for row in rows]


async def _records(admin_pool: asyncpg.Pool, schema: str) -> list[tuple[str, int, str, str]]:
    rows = await admin_pool.fetch(
        "SELECT source, version, name, checksum FROM paystream_meta.schema_migrations "
        "WHERE schema_name = $1 ORDER BY source <> 'platform', version",
        schema,
    )
    return [(r["source"], r["version"], r["name"], r["checksum"]) for r in rows]


# --------------------------------------------------------------------------- migrations


@pytest.mark.parametrize("service", SERVICES)
async def test_migrating_a_fresh_schema_applies_every_file_once_and_records_its_checksum(
    service: str, admin_pool: asyncpg.Pool, uid: str, drop_schema_after: Callable[[str], None]
) -> None:
    schema = f"{uid}_{service}"
    drop_schema_after(schema)
    expected = migrations_for(service)

    async with admin_pool.acquire() as conn:
        applied = await migrate(conn, service=service, schema=schema, password="pw-1")
        again = await migrate(conn, service=service, schema=schema, password="pw-1")

    assert applied == [f"{m.source}/{m.version:03d}_{m.name}" for m in expected]
    assert again == []
    assert await _records(admin_pool, schema) == [
        (m.source, m.version, m.name, m.checksum) for m in expected
    ]
    has_messaging = service != "gateway"
    assert ("outbox" in await _tables(admin_pool, schema)) is has_messaging


async def test_migrating_again_keeps_the_data(make_schema: Any, admin_pool: asyncpg.Pool) -> None:
    db = await make_schema("payments")
    await db.pool.execute(
        "INSERT INTO account_directory (account_id, tenant_id, currency) "
        "VALUES ('acc_1', 't', 'EUR')"
    )
    before = await _records(admin_pool, db.schema)

    async with admin_pool.acquire() as conn:
        assert await migrate(conn, service="payments", schema=db.schema, password=db.password) == []

    assert await db.pool.fetchval("SELECT count(*) FROM account_directory") == 1
    assert await _records(admin_pool, db.schema) == before


async def test_a_migration_changed_after_it_was_applied_is_refused(
    make_schema: Any, admin_pool: asyncpg.Pool
) -> None:
    db = await make_schema("fraud")
    await admin_pool.execute(
        "UPDATE paystream_meta.schema_migrations SET checksum = 'edited' "
        "WHERE schema_name = $1 AND source = 'fraud'",
        db.schema,
    )

    async with admin_pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="changed after it was applied"):
            await migrate(conn, service="fraud", schema=db.schema, password=db.password)


async def test_a_password_given_on_a_later_migration_is_the_one_the_role_logs_in_with(
    make_schema: Any, admin_pool: asyncpg.Pool
) -> None:
    db = await make_schema("gateway")
    async with admin_pool.acquire() as conn:
        await migrate(conn, service="gateway", schema=db.schema, password="rotated-password")

    conn = await asyncpg.connect(db.role_url.replace(db.password, "rotated-password"))
    assert await conn.fetchval("SELECT current_user") == db.role
    await conn.close()
    with pytest.raises(asyncpg.exceptions.InvalidPasswordError):
        await asyncpg.connect(db.role_url)


# --------------------------------------------------------------------------- roles


@pytest.fixture
async def all_schemas(make_schema: Any) -> AsyncIterator[dict[str, Any]]:
    """Every service's schema, migrated side by side as in one database."""
    yield {service: await make_schema(service) for service in SERVICES}


async def test_each_role_reads_and_writes_its_own_tables_and_its_search_path_is_its_schema(
    all_schemas: dict[str, Any],
) -> None:
    for service, db in all_schemas.items():
        conn = await db.connect_as_role()
        try:
            assert await conn.fetchval("SELECT current_schema()") == db.schema
            assert await conn.fetchval(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ) is False
            for table in await _tables(db.pool, db.schema):
                await conn.fetch(f'SELECT * FROM "{db.schema}"."{table}" LIMIT 1')
            # A write each service makes: the inbox for consumers, signing keys for the gateway.
            if service == "gateway":
                await conn.execute(
                    "INSERT INTO signing_keys (kid, algorithm, private_pem, public_jwk) "
                    "VALUES ('k1', 'EdDSA', 'pem', '{}')"
                )
            else:
                await conn.execute("INSERT INTO inbox (consumer, event_id) VALUES ('c', 'evt_1')")
                await conn.execute("DELETE FROM inbox")
        finally:
            await conn.close()


async def test_no_role_can_read_another_services_tables(all_schemas: dict[str, Any]) -> None:
    refused: list[tuple[str, str, str]] = []
    allowed: list[tuple[str, str, str]] = []
    for service, db in all_schemas.items():
        conn = await db.connect_as_role()
        try:
            for other, other_db in all_schemas.items():
                if other == service:
                    continue
                for table in await _tables(other_db.pool, other_db.schema):
                    try:
                        await conn.fetch(f'SELECT * FROM "{other_db.schema}"."{table}" LIMIT 1')
                    except asyncpg.exceptions.InsufficientPrivilegeError:
                        refused.append((service, other, table))
                    else:
                        allowed.append((service, other, table))
        finally:
            await conn.close()

    assert allowed == []
    assert ("payments", "ledger", "entries") in refused
    assert ("payments", "ledger", "accounts") in refused
    assert ("fraud", "payments", "payments") in refused


async def test_payments_role_cannot_read_or_write_the_ledger(make_schema: Any) -> None:
    ledger, payments = await make_schema("ledger"), await make_schema("payments")
    conn = await payments.connect_as_role()
    try:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.fetch(f'SELECT * FROM "{ledger.schema}".accounts')
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute(f'UPDATE "{ledger.schema}".accounts SET credits_posted = 1')
    finally:
        await conn.close()


async def test_service_roles_cannot_change_their_schema_or_read_the_migration_records(
    make_schema: Any,
) -> None:
    db = await make_schema("notifications")
    conn = await db.connect_as_role()
    try:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute("CREATE TABLE sneaky (id int)")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute("DROP TABLE deliveries")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM paystream_meta.schema_migrations")
    finally:
        await conn.close()
    assert db.role == role_name(db.schema)


# --------------------------------------------------------------------------- ledger history


@pytest.fixture
async def ledger_with_history(make_schema: Any) -> Any:
    """A ledger schema with one posted transfer (two entries) and one rejection."""
    db = await make_schema("ledger")
    await db.pool.execute(
        """
        INSERT INTO accounts (id, tenant_id, currency, kind, normal_balance, allow_overdraft)
        VALUES ('acc_a', 't', 'EUR', 'wallet', 'credit', true),
               ('acc_b', 't', 'EUR', 'wallet', 'credit', false);
        INSERT INTO transfers (id, tenant_id, external_ref, kind, amount, currency)
        VALUES ('trf_1', 't', 'pay_1', 'transfer', 5, 'EUR');
        INSERT INTO entries (transfer_id, account_id, direction, amount, currency)
        VALUES ('trf_1', 'acc_a', 'debit', 5, 'EUR'), ('trf_1', 'acc_b', 'credit', 5, 'EUR');
        UPDATE accounts SET debits_posted = 5 WHERE id = 'acc_a';
        UPDATE accounts SET credits_posted = 5 WHERE id = 'acc_b';
        INSERT INTO rejections (tenant_id, external_ref, code)
        VALUES ('t', 'pay_2', 'insufficient_funds');
        """
    )
    return db


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE entries SET amount = 6",
        "DELETE FROM entries",
        "TRUNCATE entries",
        "UPDATE transfers SET amount = 6",
        "DELETE FROM transfers",
        "DELETE FROM rejections",
        "UPDATE rejections SET code = 'ok'",
    ],
)
async def test_ledger_role_cannot_rewrite_ledger_history(
    ledger_with_history: Any, statement: str
) -> None:
    conn = await ledger_with_history.connect_as_role()
    try:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute(statement)
    finally:
        await conn.close()
    assert await ledger_with_history.pool.fetchval("SELECT sum(amount) FROM entries") == 10
    assert await ledger_with_history.pool.fetchval("SELECT count(*) FROM rejections") == 1


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE entries SET amount = 6",
        "DELETE FROM entries",
        "TRUNCATE entries",
        "UPDATE transfers SET amount = 6",
        "DELETE FROM transfers WHERE id = 'trf_1'",
    ],
)
async def test_even_the_schema_owner_cannot_rewrite_entries_or_transfers(
    ledger_with_history: Any, statement: str
) -> None:
    # The triggers hold where privileges do not reach (the superuser that ran the migration).
    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="immutable"):
        await ledger_with_history.pool.execute(statement)
    assert await ledger_with_history.pool.fetchval("SELECT sum(amount) FROM entries") == 10


async def test_ledger_role_still_appends_history_and_updates_running_totals(
    ledger_with_history: Any,
) -> None:
    conn = await ledger_with_history.connect_as_role()
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO transfers (id, tenant_id, external_ref, kind, amount, currency) "
                "VALUES ('trf_2', 't', 'pay_3', 'transfer', 1, 'EUR')"
            )
            await conn.execute(
                "INSERT INTO entries (transfer_id, account_id, direction, amount, currency) "
                "VALUES ('trf_2', 'acc_b', 'debit', 1, 'EUR'), "
                "('trf_2', 'acc_a', 'credit', 1, 'EUR')"
            )
            await conn.execute(
                "UPDATE accounts SET debits_posted = debits_posted + 1 WHERE id = 'acc_b'"
            )
            await conn.execute(
                "UPDATE accounts SET credits_posted = credits_posted + 1 WHERE id = 'acc_a'"
            )
    finally:
        await conn.close()
    assert await ledger_with_history.pool.fetchval("SELECT count(*) FROM entries") == 4
