"""The payments schema's SQL: payments, their timeline, and the account directory."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from paystream.payments.domain import DirectoryEntry, NewPayment
from paystream.platform.outbox import OutboxRows

_COLUMNS = (
    "id, tenant_id, kind, status, amount, currency, source_account_id, destination_account_id, "
    "failure_code, description, metadata, created_at, updated_at, refund_of, amount_refunded, "
    "destination_amount, destination_currency, exchange_rate, source_amount, source_currency, "
    "screening, review_reasons"
)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A payment's new status; ``screening`` records its first screening decision (None: keep)."""

    payment_id: str
    status: str
    failure_code: str | None
    screening: str | None = None


@dataclass(frozen=True, slots=True)
class PendingHandoff:
    """A review the screening deadline opened, on its way to fraud's review queue."""

    payment_id: str
    tenant_id: str
    review_id: str
    payment: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TimelineRow:
    id: str
    payment_id: str
    type: str
    status: str
    failure_code: str | None


class PaymentsStore:
    """SQL for the payments schema; every method runs on the connection it is given."""

    async def insert_payment(
        self, conn: asyncpg.Connection, payment: NewPayment, *, initiated: OutboxRows, timeline_id: str
    ) -> tuple[asyncpg.Record, bool]:
        """Insert a payment with its first timeline row (id ``timeline_id``) and its
        ``payments.initiated`` outbox row, in one statement (one round trip, one commit);
        returns (row, created). An existing idempotency key wins: then nothing is written."""
        exchange = payment.exchange
        row = await conn.fetchrow(
            f"WITH p AS (INSERT INTO payments (id, tenant_id, client_id, kind, status, amount, currency, "
            f"source_account_id, destination_account_id, description, metadata, idempotency_key, "
            f"created_at, updated_at, refund_of, destination_amount, destination_currency, "
            f"exchange_rate) VALUES ($1, $2, $3, $4, 'processing', $5, $6, $7, $8, $9, "
            f"$10, $11, $12, $12, $13, $14, $15, $16) "
            f"ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING {_COLUMNS}), "
            f"t AS (INSERT INTO payment_events (id, payment_id, type, status, failure_code, created_at) "
            f"SELECT $17, p.id, 'payment.created', 'processing', NULL, p.created_at FROM p "
            f"ON CONFLICT DO NOTHING), "
            f"o AS (INSERT INTO outbox (event_id, subject, body) "
            f"SELECT e.* FROM p, unnest($18::text[], $19::text[], $20::bytea[]) AS e) "
            f"SELECT * FROM p",
            payment.id, payment.tenant_id, payment.client_id, payment.kind,
            payment.amount.amount, payment.amount.currency, payment.source_account_id,
            payment.destination_account_id, payment.description, dict(payment.metadata),
            payment.idempotency_key, payment.created_at, payment.refund_of,
            exchange.received.amount if exchange else None,
            exchange.received.currency if exchange else None,
            exchange.rate if exchange else None,
            timeline_id, initiated.event_ids, initiated.subjects, initiated.bodies,
        )
        if row is not None:
            return row, True
        existing = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM payments WHERE tenant_id = $1 AND idempotency_key = $2",
            payment.tenant_id, payment.idempotency_key,
        )
        assert existing is not None
        return existing, False

    async def by_idempotency_key(
        self, conn: asyncpg.Connection, tenant_id: str, key: str
    ) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM payments WHERE tenant_id = $1 AND idempotency_key = $2",
            tenant_id, key,
        )

    async def lock_one(
        self, conn: asyncpg.Connection, tenant_id: str, payment_id: str
    ) -> asyncpg.Record | None:
        """Lock a payment (to refund it: refunds of one payment are created one at a time)."""
        return await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM payments WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
            payment_id, tenant_id,
        )

    async def refunds_claimed(self, conn: asyncpg.Connection, payment_id: str) -> int:
        """What the payment's refunds that have not failed or been declined add up to."""
        value = await conn.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM payments WHERE refund_of = $1 "
            "AND status IN ('processing', 'requires_review', 'succeeded')",
            payment_id,
        )
        return int(value)

    async def set_source_side(
        self, conn: asyncpg.Connection, taken: dict[str, tuple[int, str]], now: datetime
    ) -> None:
        """Record what refunds took from their source accounts in another currency."""
        if not taken:
            return
        ids = sorted(taken)
        await conn.execute(
            "UPDATE payments p SET source_amount = v.amount, source_currency = v.currency, updated_at = $4 "
            "FROM unnest($1::text[], $2::bigint[], $3::text[]) AS v(id, amount, currency) WHERE p.id = v.id",
            ids, [taken[i][0] for i in ids], [taken[i][1] for i in ids], now,
        )

    async def add_refunded(self, conn: asyncpg.Connection, refunded: dict[str, int], now: datetime) -> None:
        """Count succeeded refunds into their payments' ``amount_refunded``."""
        if not refunded:
            return
        ids = sorted(refunded)
        await conn.execute(
            "UPDATE payments p SET amount_refunded = p.amount_refunded + v.amount, updated_at = $3 "
            "FROM unnest($1::text[], $2::bigint[]) AS v(id, amount) WHERE p.id = v.id",
            ids, [refunded[i] for i in ids], now,
        )

    async def get(
        self, conn: asyncpg.Connection, tenant_id: str, payment_id: str
    ) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM payments WHERE id = $1 AND tenant_id = $2",
            payment_id, tenant_id,
        )

    async def lock(
        self, conn: asyncpg.Connection, payment_ids: Iterable[str]
    ) -> dict[str, dict[str, Any]]:
        """Lock payments, and the payments they refund, in id order, and load them.

        A refund's success adds to its original's ``amount_refunded``, so the original is
        locked here with the batch, in the same id order, not later by that update: two
        consumers then never wait for each other in a cycle (``refund_of`` never changes,
        so reading it before the lock is safe).
        """
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM payments WHERE id = ANY($1::text[]) OR id IN "
            "(SELECT refund_of FROM payments WHERE id = ANY($1::text[]) AND refund_of IS NOT NULL) "
            "ORDER BY id FOR UPDATE",
            sorted(set(payment_ids)),
        )
        return {row["id"]: dict(row) for row in rows}

    async def apply_updates(
        self, conn: asyncpg.Connection, updates: Sequence[StatusUpdate], now: datetime
    ) -> None:
        if not updates:
            return
        await conn.execute(
            "UPDATE payments p SET status = u.status, failure_code = u.failure_code, "
            "screening = coalesce(p.screening, u.screening), updated_at = $4 "
            "FROM unnest($1::text[], $2::text[], $3::text[], $5::text[]) "
            "AS u(id, status, failure_code, screening) WHERE p.id = u.id",
            [u.payment_id for u in updates],
            [u.status for u in updates],
            [u.failure_code for u in updates],
            now,
            [u.screening for u in updates],
        )

    async def set_review_reasons(self, conn: asyncpg.Connection, reasons: dict[str, list[str]]) -> None:
        """Why fraud sent each payment (id → reasons) to review."""
        if not reasons:
            return
        await conn.executemany("UPDATE payments SET review_reasons = $2 WHERE id = $1", sorted(reasons.items()))

    async def overdue(
        self, conn: asyncpg.Connection, cutoff: datetime, limit: int
    ) -> list[tuple[str, datetime]]:
        """(id, created_at) of payments created before ``cutoff`` still waiting for their
        screening decision, oldest first; read without a lock (candidates only).

        Refunds are left out: fraud approves them without rules, and they are never held.
        """
        rows = await conn.fetch(
            "SELECT id, created_at FROM payments WHERE status = 'processing' AND screening IS NULL "
            "AND created_at <= $1 AND kind <> 'refund' ORDER BY created_at LIMIT $2",
            cutoff, limit,
        )
        return [(row["id"], row["created_at"]) for row in rows]

    async def lock_unscreened(
        self, conn: asyncpg.Connection, payment_ids: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Lock those of ``payment_ids`` still in processing with no screening decision.

        Rows another copy of the service (or a consumer's batch) holds are skipped
        (``SKIP LOCKED``): each is taken by one worker, and a worker never waits.
        """
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM payments WHERE id = ANY($1::text[]) AND status = 'processing' "
            "AND screening IS NULL ORDER BY created_at FOR UPDATE SKIP LOCKED",
            list(payment_ids),
        )
        return [dict(row) for row in rows]

    async def add_deadline_reviews(
        self, conn: asyncpg.Connection, reviews: Sequence[PendingHandoff]
    ) -> None:
        if not reviews:
            return
        await conn.executemany(
            "INSERT INTO deadline_reviews (payment_id, tenant_id, review_id, payment, created_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            [(r.payment_id, r.tenant_id, r.review_id, r.payment, r.created_at) for r in reviews],
        )

    async def unsent_deadline_reviews(
        self, conn: asyncpg.Connection, limit: int
    ) -> list[PendingHandoff]:
        """Lock deadline reviews fraud has not accepted yet (one copy sends each)."""
        rows = await conn.fetch(
            "SELECT payment_id, tenant_id, review_id, payment, created_at FROM deadline_reviews "
            "WHERE sent_at IS NULL ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
            limit,
        )
        return [PendingHandoff(*row.values()) for row in rows]

    async def mark_sent(
        self, conn: asyncpg.Connection, payment_ids: Sequence[str], now: datetime
    ) -> None:
        await conn.execute(
            "UPDATE deadline_reviews SET sent_at = $2 WHERE payment_id = ANY($1::text[])",
            list(payment_ids), now,
        )

    async def add_timeline(
        self, conn: asyncpg.Connection, rows: Sequence[TimelineRow], now: datetime
    ) -> None:
        if not rows:
            return
        await conn.execute(
            "INSERT INTO payment_events (id, payment_id, type, status, failure_code, created_at) "
            "SELECT *, $6::timestamptz FROM unnest($1::text[], $2::text[], $3::text[], "
            "$4::text[], $5::text[]) ON CONFLICT DO NOTHING",
            [r.id for r in rows],
            [r.payment_id for r in rows],
            [r.type for r in rows],
            [r.status for r in rows],
            [r.failure_code for r in rows],
            now,
        )

    async def timeline(self, conn: asyncpg.Connection, payment_id: str) -> list[asyncpg.Record]:
        return await conn.fetch(
            "SELECT id, type, status, failure_code, created_at FROM payment_events "
            "WHERE payment_id = $1 ORDER BY created_at, id",
            payment_id,
        )

    async def list(
        self,
        conn: asyncpg.Connection,
        *,
        tenant_id: str,
        user_id: str | None,
        account_id: str | None,
        status: str | None,
        before_id: str | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        """Newest first; ``limit + 1`` rows so the caller can tell whether more exist."""
        clauses = ["tenant_id = $1"]
        args: list[Any] = [tenant_id]
        if account_id:
            args.append(account_id)
            clauses.append(
                f"(source_account_id = ${len(args)} OR destination_account_id = ${len(args)})"
            )
        if status:
            args.append(status)
            clauses.append(f"status = ${len(args)}")
        if before_id:
            args.append(before_id)
            clauses.append(f"id < ${len(args)}")
        if user_id:
            args.append(user_id)
            clauses.append(
                f"(source_account_id IN (SELECT account_id FROM account_directory "
                f"WHERE tenant_id = $1 AND owner_user_id = ${len(args)}) "
                f"OR destination_account_id IN (SELECT account_id FROM account_directory "
                f"WHERE tenant_id = $1 AND owner_user_id = ${len(args)}))"
            )
        args.append(limit + 1)
        return await conn.fetch(
            f"SELECT {_COLUMNS} FROM payments WHERE {' AND '.join(clauses)} "
            f"ORDER BY id DESC LIMIT ${len(args)}",
            *args,
        )

    async def directory_get(
        self, conn: asyncpg.Connection, account_ids: Sequence[str]
    ) -> dict[str, DirectoryEntry]:
        rows = await conn.fetch(
            "SELECT account_id, tenant_id, currency, owner_user_id FROM account_directory "
            "WHERE account_id = ANY($1::text[])",
            list(account_ids),
        )
        return {r["account_id"]: DirectoryEntry(*r.values()) for r in rows}

    async def directory_put(self, conn: asyncpg.Connection, entry: DirectoryEntry) -> None:
        await conn.execute(
            "INSERT INTO account_directory (account_id, tenant_id, currency, owner_user_id) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            entry.account_id, entry.tenant_id, entry.currency, entry.owner_user_id,
        )
