"""`platform.db.Listener`, the LISTEN that the outbox relay and the webhook worker hold, against
real PostgreSQL: it comes back by itself after the server drops every connection (as a crash
or a fast shutdown does), and never raises while it cannot listen."""

from __future__ import annotations

import asyncio
from typing import Any

from paystream.platform.db import Listener, create_pool


async def _notify(admin_pool: Any, channel: str) -> None:
    await admin_pool.execute("SELECT pg_notify($1, 'x')", channel)


async def test_the_listener_listens_again_after_every_connection_was_cut(make_schema: Any, admin_pool: Any) -> None:
    db = await make_schema("notifications")
    name = f"listener-{db.schema}"
    channel = f"{db.schema}_test"
    pool = await create_pool(db.role_url, min_size=1, max_size=2, application_name=name)
    heard = asyncio.Event()
    listener = Listener(pool, channel, lambda *_: heard.set(), name="test")
    try:
        await listener.ensure()
        assert listener.listening
        await _notify(admin_pool, channel)
        await asyncio.wait_for(heard.wait(), timeout=5)

        cut = await admin_pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", name
        )
        assert cut >= 1
        heard.clear()
        for _ in range(20):  # what a worker's loop does each round, until it hears again
            await listener.ensure()
            await _notify(admin_pool, channel)
            try:
                await asyncio.wait_for(heard.wait(), timeout=0.5)
                break
            except TimeoutError:
                continue
        assert heard.is_set(), "the listener never heard a NOTIFY again after the connections were cut"
    finally:
        await listener.close()
        await pool.close()


async def test_ensure_does_not_raise_while_the_database_cannot_be_reached(make_schema: Any) -> None:
    db = await make_schema("notifications")
    pool = await create_pool(db.role_url, min_size=0, max_size=1)
    await pool.close()  # every acquire now fails, as while the server is away
    listener = Listener(pool, f"{db.schema}_test", lambda *_: None, name="test")
    await listener.ensure()
    assert not listener.listening
    await listener.close()
