"""The audit log on real PostgreSQL: appended by requests, chained in order, append-only,
and any change behind its back named by `verify`."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from paystream.gateway.audit import AuditRecord, append, chain_pending, verify


def _record(n: int) -> AuditRecord:
    return AuditRecord(actor=f"cli_{n % 3}", source="203.0.113.7", action="POST /v1/payments",
                       outcome=202, tenant_id="default", object_id=f"pay_{n}", correlation_id=f"c{n}")


@pytest.fixture
async def gateway(make_schema: Any) -> Any:
    return await make_schema("gateway")


async def _append_and_chain(gateway: Any, count: int) -> None:
    conn = await gateway.connect_as_role()
    try:
        for n in range(count):
            await append(conn, _record(n))
        while await chain_pending(conn, limit=7):
            pass
    finally:
        await conn.close()


async def _verify(gateway: Any) -> Any:
    async with gateway.pool.acquire() as conn:
        return await verify(conn)


async def test_records_appended_concurrently_are_all_chained_and_verify(gateway: Any) -> None:
    async def writer(offset: int) -> None:
        conn = await gateway.connect_as_role()
        try:
            for n in range(offset, offset + 25):
                await append(conn, _record(n))
        finally:
            await conn.close()

    async def chainer() -> None:
        conn = await gateway.connect_as_role()
        try:
            for _ in range(20):
                await chain_pending(conn, limit=10)
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    await asyncio.gather(*(writer(k * 100) for k in range(4)), chainer(), chainer())
    conn = await gateway.connect_as_role()
    try:
        while await chain_pending(conn):
            pass
    finally:
        await conn.close()
    report = await _verify(gateway)
    assert report.ok, report.problems
    assert report.records == report.chained == 100


async def test_a_chained_record_cannot_be_changed_or_deleted_by_the_gateway(gateway: Any) -> None:
    await _append_and_chain(gateway, 3)
    conn = await gateway.connect_as_role()
    try:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute("UPDATE audit_log SET outcome = 200 WHERE chain_seq = 2")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit_log WHERE chain_seq = 2")
    finally:
        await conn.close()
    assert (await _verify(gateway)).ok


async def _behind_its_back(gateway: Any, sql: str) -> None:
    """What a superuser could do with triggers off."""
    async with gateway.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(sql)


async def test_a_record_changed_behind_the_logs_back_is_named(gateway: Any) -> None:
    await _append_and_chain(gateway, 10)
    target = await gateway.pool.fetchval("SELECT id FROM audit_log WHERE chain_seq = 4")
    await _behind_its_back(gateway, f"UPDATE audit_log SET outcome = 200 WHERE id = {target}")
    report = await _verify(gateway)
    assert not report.ok
    assert report.problems[0].startswith(f"record {target} (#4): its content does not match")


async def test_a_record_deleted_from_the_middle_is_found(gateway: Any) -> None:
    await _append_and_chain(gateway, 10)
    await _behind_its_back(gateway, "DELETE FROM audit_log WHERE chain_seq = 6")
    report = await _verify(gateway)
    assert not report.ok
    assert "chain position 7, expected 6" in report.problems[0]


async def test_records_removed_from_the_end_are_found(gateway: Any) -> None:
    await _append_and_chain(gateway, 10)
    await _behind_its_back(gateway, "DELETE FROM audit_log WHERE chain_seq > 8")
    report = await _verify(gateway)
    assert not report.ok
    assert "the chain head says 10 records, the log holds 8" in report.problems[0]


async def test_a_rewritten_chain_is_found_by_its_links(gateway: Any) -> None:
    await _append_and_chain(gateway, 5)
    await _behind_its_back(gateway, "UPDATE audit_log SET prev_hash = decode(repeat('11', 32), 'hex') "
                                    "WHERE chain_seq = 3")
    report = await _verify(gateway)
    assert not report.ok
    assert "does not link to the record before it" in report.problems[0]
