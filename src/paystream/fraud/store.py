"""The fraud schema's SQL: decisions and the review queue."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

_REVIEW_COLUMNS = "id, tenant_id, payment_id, status, reasons, payment, amount, currency, created_at, decided_at"


def review_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "payment_id": row["payment_id"],
        "status": row["status"],
        "reasons": list(row["reasons"]),
        "amount": row["amount"],
        "currency": row["currency"],
        "created_at": row["created_at"],
        "decided_at": row["decided_at"],
    }


class FraudStore:
    async def decided(self, conn: asyncpg.Connection, payment_ids: Iterable[str]) -> set[str]:
        rows = await conn.fetch(
            "SELECT payment_id FROM decisions WHERE payment_id = ANY($1::text[])", list(payment_ids)
        )
        return {row["payment_id"] for row in rows}

    async def add_decisions(
        self, conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, list[str]]], now: datetime
    ) -> None:
        """(payment id, tenant id, outcome, reasons) rows."""
        if not rows:
            return
        await conn.executemany(
            "INSERT INTO decisions (payment_id, tenant_id, outcome, reasons, created_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            [(*row, now) for row in rows],
        )

    async def add_reviews(
        self, conn: asyncpg.Connection, rows: Sequence[dict[str, Any]], now: datetime
    ) -> None:
        if not rows:
            return
        await conn.executemany(
            "INSERT INTO reviews (id, tenant_id, payment_id, status, reasons, payment, amount, "
            "currency, created_at) VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8)",
            [
                (r["id"], r["tenant_id"], r["payment_id"], r["reasons"], r["payment"], r["amount"],
                 r["currency"], now)
                for r in rows
            ],
        )

    async def get_review(
        self, conn: asyncpg.Connection, tenant_id: str, review_id: str
    ) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {_REVIEW_COLUMNS} FROM reviews WHERE id = $1 AND tenant_id = $2",
            review_id, tenant_id,
        )

    async def decide_review(
        self,
        conn: asyncpg.Connection,
        *,
        tenant_id: str,
        review_id: str,
        status: str,
        decided_by: str,
        note: str | None,
        now: datetime,
    ) -> asyncpg.Record | None:
        """Close an open review; None when it is not open (or not there)."""
        return await conn.fetchrow(
            f"UPDATE reviews SET status = $3, decided_at = $4, decided_by = $5, note = $6 "
            f"WHERE id = $1 AND tenant_id = $2 AND status = 'open' RETURNING {_REVIEW_COLUMNS}",
            review_id, tenant_id, status, now, decided_by, note,
        )

    async def list_reviews(
        self,
        conn: asyncpg.Connection,
        *,
        tenant_id: str,
        status: str | None,
        before_id: str | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        return await conn.fetch(
            f"SELECT {_REVIEW_COLUMNS} FROM reviews WHERE tenant_id = $1 "
            "AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR id < $3) "
            "ORDER BY id DESC LIMIT $4",
            tenant_id, status, before_id, limit + 1,
        )
