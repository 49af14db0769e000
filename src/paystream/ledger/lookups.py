"""The ledger's read-only lookups: past balances, entries, decided refs, holds by ref, what a
refund reverses and what is left of it, transfers. `LedgerStore` inherits them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import asyncpg

from paystream.ledger.domain import Leg
from paystream.ledger.orders import PostedTransfer

# The (tenant, external ref) pairs of $1, $2 that were decided: posted, held (with the
# pending transfer's id) or rejected. `LedgerStore.lock_accounts_with_decisions` runs it
# inside its lock statement.
DECIDED_REFS = (
    "SELECT t.tenant_id, t.external_ref, t.id, t.phase FROM transfers t "
    "JOIN unnest($1::text[], $2::text[]) AS r(tenant_id, ref) "
    "ON t.tenant_id = r.tenant_id AND t.external_ref = r.ref "
    "AND t.phase IN ('posted', 'pending') "
    "UNION ALL "
    "SELECT j.tenant_id, j.external_ref, NULL, 'rejected' FROM rejections j "
    "JOIN unnest($1::text[], $2::text[]) AS r(tenant_id, ref) "
    "ON j.tenant_id = r.tenant_id AND j.external_ref = r.ref"
)


class TransferLookups:
    """Read-only SQL over the ledger schema; every method runs on the connection it is given."""

    async def posted_as_of(
        self, conn: asyncpg.Connection, account_id: str, as_of: datetime
    ) -> tuple[int, int]:
        """(debits, credits) posted to the account up to ``as_of``, from its entries alone."""
        row = await conn.fetchrow(
            "SELECT coalesce(sum(amount) FILTER (WHERE direction = 'debit'), 0) AS debits, "
            "coalesce(sum(amount) FILTER (WHERE direction = 'credit'), 0) AS credits "
            "FROM entries WHERE account_id = $1 AND created_at <= $2",
            account_id, as_of,
        )
        assert row is not None
        return int(row["debits"]), int(row["credits"])

    async def list_entries(
        self,
        conn: asyncpg.Connection,
        account_id: str,
        *,
        limit: int,
        before_seq: int | None,
    ) -> list[asyncpg.Record]:
        """The account's entries, newest first; ``limit + 1`` rows so the caller sees has_more."""
        return await conn.fetch(
            "SELECT e.id, e.account_id, e.transfer_id, t.external_ref, t.kind, e.direction, e.amount, "
            "e.currency, e.created_at FROM entries e JOIN transfers t ON t.id = e.transfer_id "
            "WHERE e.account_id = $1 AND ($2::bigint IS NULL OR e.id < $2) "
            "ORDER BY e.id DESC LIMIT $3",
            account_id, before_seq, limit + 1,
        )

    async def decisions(
        self, conn: asyncpg.Connection, refs: Iterable[tuple[str, str]]
    ) -> tuple[set[tuple[str, str]], dict[tuple[str, str], str]]:
        """In one round trip: which (tenant, external ref) pairs were decided (posted, held or
        rejected), and the pending transfer's id for those that made a hold."""
        refs = list(refs)
        if not refs:
            return set(), {}
        rows = await conn.fetch(DECIDED_REFS, [r[0] for r in refs], [r[1] for r in refs])
        decided = {(row["tenant_id"], row["external_ref"]) for row in rows}
        held = {(row["tenant_id"], row["external_ref"]): row["id"] for row in rows
                if row["phase"] == "pending"}
        return decided, held

    async def posted_transfers_by_ref(
        self, conn: asyncpg.Connection, refs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], PostedTransfer]:
        """How each (tenant, external ref) was posted: in one step, or by a hold's post."""
        refs = list(refs)
        if not refs:
            return {}
        rows = await conn.fetch(
            "SELECT r.tenant_id, r.ref, t.id, t.currency, t.amount, e.account_id, e.direction, "
            "e.amount AS leg_amount, e.currency AS leg_currency "
            "FROM unnest($1::text[], $2::text[]) AS r(tenant_id, ref) "
            "JOIN transfers o ON o.tenant_id = r.tenant_id AND o.external_ref = r.ref "
            "AND o.phase IN ('posted', 'pending') "
            "JOIN transfers t ON (t.id = o.id AND o.phase = 'posted') "
            "  OR (t.pending_id = o.id AND o.phase = 'pending' AND t.phase = 'post_pending') "
            "JOIN entries e ON e.transfer_id = t.id OR e.transfer_id = (SELECT f.id FROM transfers f "
            "  WHERE f.tenant_id = r.tenant_id AND f.external_ref = r.ref || ':fx' AND f.phase = 'posted') "
            "ORDER BY e.id",
            [r[0] for r in refs], [r[1] for r in refs],
        )
        found: dict[tuple[str, str], PostedTransfer] = {}
        for row in rows:
            key = (row["tenant_id"], row["ref"])
            leg = Leg(row["account_id"], row["direction"], row["leg_amount"], row["leg_currency"])
            known = found.get(key)
            legs = (known.legs if known else ()) + (leg,)
            found[key] = PostedTransfer(row["id"], row["ref"], row["currency"], row["amount"], legs)
        return found

    async def refundable(self, conn: asyncpg.Connection, transfer_ids: Iterable[str]) -> dict[str, int]:
        """What is left to refund of each posted transfer: its amount less its refunds so far.

        Read after the accounts are locked: every refund of a transfer debits, and so locks,
        the account the payment credited, so no other refund of it can commit in between.
        """
        transfer_ids = list(set(transfer_ids))
        if not transfer_ids:
            return {}
        rows = await conn.fetch(
            "SELECT t.id, t.amount - coalesce((SELECT sum(r.amount) FROM transfers r "
            "WHERE r.refund_of = t.id), 0) AS room FROM transfers t WHERE t.id = ANY($1::text[])",
            list(set(transfer_ids)),
        )
        return {row["id"]: int(row["room"]) for row in rows}

    async def get_transfer(
        self, conn: asyncpg.Connection, tenant_id: str, transfer_id: str
    ) -> asyncpg.Record | None:
        return await conn.fetchrow(
            "SELECT t.id, t.tenant_id, t.external_ref, t.kind, t.amount, t.currency, t.phase, "
            "t.pending_id, t.refund_of, t.metadata, t.created_at, h.status AS hold_status, "
            "h.expires_at, h.closed_by, h.debit_account_id, h.credit_account_id, "
            "h.amount AS hold_amount FROM transfers t LEFT JOIN holds h ON h.transfer_id = t.id "
            "WHERE t.id = $1 AND t.tenant_id = $2",
            transfer_id, tenant_id,
        )

    async def transfer_by_ref(
        self, conn: asyncpg.Connection, tenant_id: str, external_ref: str
    ) -> str | None:
        """The id of the transfer written under ``external_ref``, if one was."""
        value = await conn.fetchval(
            "SELECT id FROM transfers WHERE tenant_id = $1 AND external_ref = $2 "
            "AND phase IN ('posted', 'pending')",
            tenant_id, external_ref,
        )
        return None if value is None else str(value)

    async def transfer_legs(self, conn: asyncpg.Connection, transfer_ids: Iterable[str]) -> list[asyncpg.Record]:
        """The entries of the transfers given, in order."""
        return await conn.fetch(
            "SELECT transfer_id, account_id, direction, amount, currency FROM entries "
            "WHERE transfer_id = ANY($1::text[]) ORDER BY id",
            list(set(transfer_ids)),
        )
