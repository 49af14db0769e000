"""Every state-changing request leaves an audit record (who, what, when, from where, on
which object, outcome), and `paystream audit verify` finds the chain intact."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import asyncpg
import httpx

from paystream.tools.client import PaystreamClient

from .stack import UpProcess


async def test_requests_are_audited_and_the_chain_verifies(stack: UpProcess, client: PaystreamClient) -> None:
    assert stack.info is not None
    account = await client.create_account("USD")
    deposit = await client.request(
        "POST", "/v1/deposits", idempotency_key=uuid.uuid4().hex,
        json_body={"account_id": account["id"], "amount": 700, "currency": "USD"},
    )
    assert deposit.status_code == 202
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=5) as http:
        refused = await http.post("/v1/payments", json={}, headers={"Idempotency-Key": "x"})
    assert refused.status_code == 401

    conn = await asyncpg.connect(stack.info.postgres_url, server_settings={"search_path": "gateway"})
    try:
        deadline = time.monotonic() + 15
        while await conn.fetchval("SELECT count(*) FROM audit_log WHERE hash IS NULL"):
            assert time.monotonic() < deadline, "the chainer did not link the new records"
            await asyncio.sleep(0.2)
        row = await conn.fetchrow("SELECT * FROM audit_log WHERE object_id = $1", deposit.json()["id"])
        anonymous = await conn.fetch(
            "SELECT * FROM audit_log WHERE actor = 'anonymous' AND action = 'POST /v1/payments'"
        )
    finally:
        await conn.close()
    assert row is not None
    assert (row["actor"], row["action"], row["outcome"], row["source"]) == (
        stack.info.client_id, "POST /v1/deposits", 202, "127.0.0.1")
    assert row["tenant_id"] == "default" and row["correlation_id"]
    assert any(r["outcome"] == 401 for r in anonymous)

    verified = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "paystream", "audit", "verify", "--home", str(stack.home)],
        capture_output=True, text=True, timeout=60,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "the chain is intact" in verified.stdout
