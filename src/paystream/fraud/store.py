"""The fraud schema's SQL: decisions and the review queue."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from paystream.fraud.domain import ModelScore
from paystream.fraud.features import PaymentFacts

_REVIEW_COLUMNS = (
    "id, tenant_id, payment_id, status, reasons, payment, amount, currency, created_at, decided_at, "
    "score, model_version"
)


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
        """Open reviews; a payment that has one already keeps it (one review per payment).

        A row's ``rescreen_at`` (None: a human's only) schedules its re-screen.
        """
        if not rows:
            return
        await conn.executemany(
            "INSERT INTO reviews (id, tenant_id, payment_id, status, reasons, payment, amount, "
            "currency, created_at, rescreen_at, score, model_version) "
            "VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8, $9, $10, $11) "
            "ON CONFLICT (payment_id) DO NOTHING",
            [
                (r["id"], r["tenant_id"], r["payment_id"], r["reasons"], r["payment"], r["amount"],
                 r["currency"], r.get("created_at", now), r.get("rescreen_at"), r.get("score"),
                 r.get("model_version"))
                for r in rows
            ],
        )

    async def add_facts(self, conn: asyncpg.Connection, facts: Sequence[PaymentFacts]) -> None:
        """Keep what the features saw of each payment (the Redis state is rebuilt from these)."""
        if not facts:
            return
        await conn.executemany(
            "INSERT INTO payment_facts (payment_id, subject, counterparty, amount, is_deposit, at_ms) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (payment_id) DO NOTHING",
            [(f.payment_id, f.subject, f.counterparty, f.amount, f.is_deposit, f.at_ms) for f in facts],
        )

    async def facts_since(
        self, conn: asyncpg.Connection, since_ms: int, after: tuple[int, str], limit: int
    ) -> list[PaymentFacts]:
        """Stored payment facts from ``since_ms`` on, in time order, after the (at, id) cursor."""
        rows = await conn.fetch(
            "SELECT payment_id, subject, counterparty, amount, is_deposit, at_ms FROM payment_facts "
            "WHERE at_ms >= $1 AND (at_ms, payment_id) > ($2, $3) ORDER BY at_ms, payment_id LIMIT $4",
            since_ms, after[0], after[1], limit,
        )
        return [PaymentFacts(payment_id=r["payment_id"], at_ms=r["at_ms"], subject=r["subject"],
                             counterparty=r["counterparty"], amount=r["amount"], is_deposit=r["is_deposit"])
                for r in rows]

    async def add_scores(
        self, conn: asyncpg.Connection, mode: str, scores: Sequence[tuple[str, ModelScore]], now: datetime
    ) -> None:
        """What the model said of each (payment id, score), deciding (``on``) or not (``shadow``)."""
        if not scores:
            return
        await conn.executemany(
            "INSERT INTO model_scores (payment_id, mode, model_version, score, model_outcome, top_features, "
            "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (payment_id) DO NOTHING",
            [(pid, mode, s.version, s.score, s.outcome, list(s.top_features), now) for pid, s in scores],
        )

    async def add_label(
        self, conn: asyncpg.Connection, *, payment_id: str, tenant_id: str, source: str, label: int,
        reason: str, note: str | None, created_by: str, now: datetime,
    ) -> tuple[asyncpg.Record, bool]:
        """Store a label; the one already there for (payment, source) stands. (row, created)."""
        row = await conn.fetchrow(
            "INSERT INTO labels (payment_id, source, tenant_id, label, reason, note, created_by, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (payment_id, source) DO NOTHING "
            "RETURNING payment_id, reason, note, created_at",
            payment_id, source, tenant_id, label, reason, note, created_by, now,
        )
        if row is not None:
            return row, True
        existing = await conn.fetchrow(
            "SELECT payment_id, reason, note, created_at FROM labels WHERE payment_id = $1 AND source = $2",
            payment_id, source,
        )
        return existing, False

    async def decided_for(self, conn: asyncpg.Connection, tenant_id: str, payment_id: str) -> bool:
        """Whether fraud screened this payment for this tenant."""
        return bool(await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM decisions WHERE payment_id = $1 AND tenant_id = $2)",
            payment_id, tenant_id,
        ))

    async def due_rescreens(
        self, conn: asyncpg.Connection, now: datetime, limit: int
    ) -> list[asyncpg.Record]:
        """Lock open reviews whose re-screen is due; rows another copy holds are skipped."""
        return await conn.fetch(
            f"SELECT {_REVIEW_COLUMNS}, rescreen_attempts FROM reviews "
            "WHERE status = 'open' AND rescreen_at <= $1 ORDER BY rescreen_at LIMIT $2 "
            "FOR UPDATE SKIP LOCKED",
            now, limit,
        )

    async def reschedule(
        self, conn: asyncpg.Connection, when: dict[str, datetime]
    ) -> None:
        """Try these reviews' re-screens again later (review id → when), one attempt more."""
        if not when:
            return
        ids = sorted(when)
        await conn.execute(
            "UPDATE reviews r SET rescreen_at = v.at, rescreen_attempts = r.rescreen_attempts + 1 "
            "FROM unnest($1::text[], $2::timestamptz[]) AS v(id, at) WHERE r.id = v.id",
            ids, [when[i] for i in ids],
        )

    async def to_human(self, conn: asyncpg.Connection, review_id: str, reasons: list[str]) -> None:
        """No more re-screens: the review waits for a person, with the reasons the rules give now."""
        await conn.execute(
            "UPDATE reviews SET rescreen_at = NULL, rescreen_attempts = rescreen_attempts + 1, "
            "reasons = $2 WHERE id = $1",
            review_id, reasons,
        )

    async def decision_delay_ms(self, conn: asyncpg.Connection) -> int:
        """The game-day fault: how long each screening decision waits (0: not at all)."""
        value = await conn.fetchval("SELECT decision_delay_ms FROM faults WHERE id = 1")
        return int(value or 0)

    async def set_decision_delay_ms(self, conn: asyncpg.Connection, delay_ms: int, now: datetime) -> None:
        await conn.execute(
            "INSERT INTO faults (id, decision_delay_ms, updated_at) VALUES (1, $1, $2) "
            "ON CONFLICT (id) DO UPDATE SET decision_delay_ms = $1, updated_at = $2",
            delay_ms, now,
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
