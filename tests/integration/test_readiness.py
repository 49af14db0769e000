"""``/readyz`` of a service answers 503 with the reason while its work pools (bulkheads) or its
database pool are more than 90 % busy, and 200 again once they drain (real PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from paystream.platform.config import load_settings
from paystream.platform.db import create_pool
from paystream.platform.observability import Metrics
from paystream.platform.outbox import Outbox
from paystream.platform.resilience import Guard, GuardPolicy
from paystream.platform.runtime import Needs, ServiceContext, ServiceParts, create_app


async def _readyz(ctx: ServiceContext) -> httpx.Response:
    app = create_app(ctx, ServiceParts())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        return await client.get("/readyz")


def _context(pool: Any = None) -> ServiceContext:
    return ServiceContext(
        name="test", settings=load_settings(), metrics=Metrics("test"),
        needs=Needs(postgres=pool is not None), pool=pool, outbox=Outbox(8),
    )


async def test_a_full_bulkhead_makes_the_service_not_ready_until_it_drains() -> None:
    ctx = _context()
    guard = Guard("fraud", GuardPolicy(max_concurrent=2, timeout=10), metrics=ctx.metrics)
    release = asyncio.Event()
    calls = [asyncio.create_task(guard.call(release.wait)) for _ in range(2)]
    await asyncio.sleep(0.05)
    busy = await _readyz(ctx)
    assert busy.status_code == 503
    assert "work pools saturated: fraud (100%)" in busy.text
    release.set()
    await asyncio.gather(*calls)
    assert (await _readyz(ctx)).status_code == 200


async def test_a_busy_database_pool_makes_the_service_not_ready_until_it_drains(make_schema: Any) -> None:
    db = await make_schema("payments")
    pool = await create_pool(db.role_url, min_size=1, max_size=4, application_name="paystream-tests")
    try:
        ctx = _context(pool)
        assert (await _readyz(ctx)).status_code == 200
        held = [await pool.acquire() for _ in range(4)]
        busy = await _readyz(ctx)
        assert busy.status_code == 503
        assert "database pool saturated (4 of 4 connections busy)" in busy.text
        for conn in held:
            await pool.release(conn)
        assert (await _readyz(ctx)).status_code == 200
    finally:
        await pool.close()
