"""The notifications schema's SQL: endpoints and the delivery queue."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

_ENDPOINT_COLUMNS = "id, tenant_id, url, events, description, created_at"


class NotificationsStore:
    async def create_endpoint(self, conn: asyncpg.Connection, values: dict[str, Any]) -> tuple[asyncpg.Record, bool]:
        row = await conn.fetchrow(
            f"INSERT INTO endpoints (id, tenant_id, url, events, secret, description, create_key) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, create_key) DO NOTHING "
            f"RETURNING {_ENDPOINT_COLUMNS}",
            values["id"], values["tenant_id"], values["url"], values["events"], values["secret"],
            values["description"], values["create_key"],
        )
        if row is not None:
            return row, True
        existing = await conn.fetchrow(
            f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE tenant_id = $1 AND create_key = $2",
            values["tenant_id"], values["create_key"],
        )
        assert existing is not None
        return existing, False

    async def get_endpoint(self, conn: asyncpg.Connection, tenant_id: str, endpoint_id: str) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE id = $1 AND tenant_id = $2 AND enabled",
            endpoint_id, tenant_id,
        )

    async def list_endpoints(
        self, conn: asyncpg.Connection, tenant_id: str, *, before_id: str | None, limit: int
    ) -> list[asyncpg.Record]:
        return await conn.fetch(
            f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE tenant_id = $1 AND enabled "
            "AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
            tenant_id, before_id, limit + 1,
        )

    async def disable_endpoint(self, conn: asyncpg.Connection, tenant_id: str, endpoint_id: str) -> bool:
        result = await conn.execute(
            "UPDATE endpoints SET enabled = false WHERE id = $1 AND tenant_id = $2 AND enabled",
            endpoint_id, tenant_id,
        )
        return str(result).endswith(" 1")

    async def subscribers(self, conn: asyncpg.Connection, tenant_ids: Iterable[str]) -> list[asyncpg.Record]:
        return await conn.fetch(
            "SELECT id, tenant_id, events FROM endpoints WHERE tenant_id = ANY($1::text[]) AND enabled",
            list(set(tenant_ids)),
        )

    async def enqueue(
        self, conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, str, bytes, str | None]]
    ) -> None:
        """(event id, endpoint id, tenant id, event type, body, traceparent) rows; duplicates are ignored."""
        if not rows:
            return
        await conn.execute(
            "INSERT INTO deliveries (event_id, endpoint_id, tenant_id, event_type, body, traceparent) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[]) "
            "ON CONFLICT (endpoint_id, event_id) DO NOTHING",
            [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
            [r[4] for r in rows], [r[5] for r in rows],
        )

    async def claim_due(self, conn: asyncpg.Connection, *, limit: int, lease_seconds: float) -> list[asyncpg.Record]:
        """Lease due deliveries: another worker will not take them until the lease ends."""
        return await conn.fetch(
            "WITH due AS (SELECT id FROM deliveries WHERE status = 'pending' "
            "AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) "
            "UPDATE deliveries d SET next_attempt_at = now() + make_interval(secs => $2) "
            "FROM due, endpoints e WHERE d.id = due.id AND e.id = d.endpoint_id "
            "RETURNING d.id, d.event_id, d.event_type, d.body, d.attempts, d.traceparent, e.id AS endpoint_id, "
            "e.url, e.secret, e.enabled",
            limit, lease_seconds,
        )

    async def record_results(
        self, conn: asyncpg.Connection, results: Sequence[dict[str, Any]], now: datetime
    ) -> None:
        """Write attempt outcomes: status, attempts, next attempt time, last answer."""
        if not results:
            return
        await conn.execute(
            "UPDATE deliveries d SET status = r.status, attempts = r.attempts, "
            "next_attempt_at = r.next_at, last_status = r.last_status, last_error = r.last_error, "
            "delivered_at = CASE WHEN r.status = 'delivered' THEN $7::timestamptz END "
            "FROM unnest($1::bigint[], $2::text[], $3::int[], $4::timestamptz[], $5::int[], $6::text[]) "
            "AS r(id, status, attempts, next_at, last_status, last_error) WHERE d.id = r.id",
            [r["id"] for r in results],
            [r["status"] for r in results],
            [r["attempts"] for r in results],
            [r["next_at"] for r in results],
            [r["last_status"] for r in results],
            [r["last_error"] for r in results],
            now,
        )
