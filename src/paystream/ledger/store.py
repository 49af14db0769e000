"""The ledger's SQL: accounts, set-based batch posting, entries.

Posting locks the accounts a batch touches in id order (``ORDER BY id FOR UPDATE``),
so concurrent batches never deadlock, then writes every change of the batch with a
handful of set-based statements. Entries are appended to the ledger's hash chain
(`paystream.ledger.chain`) in the same transaction, after locking the chain's head.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import asyncpg

from paystream.ledger.chain import EntryFields, extend
from paystream.ledger.domain import AccountState, BatchResult, Posted, Rejected, TransferRequest
from paystream.platform.ids import new_id

_ACCOUNT_COLUMNS = (
    "id, tenant_id, currency, kind, normal_balance, allow_overdraft, owner_user_id, metadata, "
    "debits_posted, credits_posted, debits_pending, credits_pending, created_at"
)


def _state(row: Mapping[str, Any]) -> AccountState:
    return AccountState(
        id=row["id"],
        tenant_id=row["tenant_id"],
        currency=row["currency"],
        normal_balance=row["normal_balance"],
        allow_overdraft=row["allow_overdraft"],
        debits_posted=row["debits_posted"],
        credits_posted=row["credits_posted"],
        debits_pending=row["debits_pending"],
        credits_pending=row["credits_pending"],
    )


def account_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """The public account object for a row."""
    state = _state(row)
    return {
        "id": row["id"],
        "currency": row["currency"],
        "allow_overdraft": row["allow_overdraft"],
        "balance": {
            "posted": state.posted,
            "pending": state.pending,
            "available": state.available,
        },
        "metadata": row["metadata"],
        "owner_user_id": row["owner_user_id"],
        "created_at": row["created_at"],
    }


class LedgerStore:
    """SQL for the ledger schema; every method runs on the connection it is given."""

    async def create_account(
        self,
        conn: asyncpg.Connection,
        *,
        tenant_id: str,
        currency: str,
        allow_overdraft: bool,
        owner_user_id: str | None,
        metadata: dict[str, str],
        create_key: str | None,
    ) -> asyncpg.Record:
        """A new wallet (or the one an earlier call with the same ``create_key`` made)."""
        await self.ensure_settlement(conn, tenant_id, currency)
        row = await conn.fetchrow(
            f"INSERT INTO accounts (id, tenant_id, currency, kind, normal_balance, "
            f"allow_overdraft, owner_user_id, metadata, create_key) "
            f"VALUES ($1, $2, $3, 'wallet', 'credit', $4, $5, $6, $7) "
            f"ON CONFLICT (tenant_id, create_key) DO NOTHING RETURNING {_ACCOUNT_COLUMNS}",
            new_id("acc"), tenant_id, currency, allow_overdraft, owner_user_id, metadata,
            create_key,
        )
        if row is None:
            row = await conn.fetchrow(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE tenant_id = $1 AND create_key = $2",
                tenant_id, create_key,
            )
        assert row is not None
        return row

    async def ensure_settlement(self, conn: asyncpg.Connection, tenant_id: str, currency: str) -> None:
        """The tenant's settlement account for ``currency``: where deposits come from."""
        await conn.execute(
            "INSERT INTO accounts (id, tenant_id, currency, kind, normal_balance, allow_overdraft, "
            "metadata) VALUES ($1, $2, $3, 'settlement', 'debit', true, '{\"system\": \"settlement\"}') "
            "ON CONFLICT DO NOTHING",
            new_id("acc"), tenant_id, currency,
        )

    async def get_account(
        self, conn: asyncpg.Connection, tenant_id: str, account_id: str
    ) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = $1 AND tenant_id = $2 "
            "AND kind = 'wallet'",
            account_id, tenant_id,
        )

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
            "SELECT e.id, e.account_id, e.transfer_id, t.external_ref, e.direction, e.amount, "
            "e.currency, e.created_at FROM entries e JOIN transfers t ON t.id = e.transfer_id "
            "WHERE e.account_id = $1 AND ($2::bigint IS NULL OR e.id < $2) "
            "ORDER BY e.id DESC LIMIT $3",
            account_id, before_seq, limit + 1,
        )

    async def settlement_ids(
        self, conn: asyncpg.Connection, pairs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """Settlement account ids by (tenant, currency), for the pairs that have one."""
        pairs = list(set(pairs))
        if not pairs:
            return {}
        rows = await conn.fetch(
            "SELECT a.id, a.tenant_id, a.currency FROM accounts a "
            "JOIN unnest($1::text[], $2::text[]) AS p(tenant_id, currency) "
            "ON a.tenant_id = p.tenant_id AND a.currency = p.currency AND a.kind = 'settlement'",
            [p[0] for p in pairs], [p[1] for p in pairs],
        )
        return {(row["tenant_id"], row["currency"]): row["id"] for row in rows}

    async def decided_refs(
        self, conn: asyncpg.Connection, refs: Iterable[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Which (tenant, external ref) pairs were already posted or rejected."""
        refs = list(refs)
        if not refs:
            return set()
        tenants, ext = [r[0] for r in refs], [r[1] for r in refs]
        rows = await conn.fetch(
            "SELECT t.tenant_id, t.external_ref FROM transfers t "
            "JOIN unnest($1::text[], $2::text[]) AS r(tenant_id, ref) "
            "ON t.tenant_id = r.tenant_id AND t.external_ref = r.ref "
            "UNION ALL "
            "SELECT j.tenant_id, j.external_ref FROM rejections j "
            "JOIN unnest($1::text[], $2::text[]) AS r(tenant_id, ref) "
            "ON j.tenant_id = r.tenant_id AND j.external_ref = r.ref",
            tenants, ext,
        )
        return {(row["tenant_id"], row["external_ref"]) for row in rows}

    async def lock_accounts(
        self, conn: asyncpg.Connection, account_ids: Iterable[str]
    ) -> dict[str, AccountState]:
        """Lock the accounts in id order (no deadlocks) and load their running totals."""
        rows = await conn.fetch(
            "SELECT id, tenant_id, currency, kind, normal_balance, allow_overdraft, "
            "debits_posted, credits_posted, debits_pending, credits_pending "
            "FROM accounts WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
            sorted(set(account_ids)),
        )
        return {row["id"]: _state(row) for row in rows}

    async def write_batch(
        self,
        conn: asyncpg.Connection,
        accounts: dict[str, AccountState],
        result: BatchResult,
        now: datetime,
    ) -> None:
        """Persist a decided batch: balances, transfers, entries, rejections."""
        touched = sorted(result.touched)
        if touched:
            await conn.execute(
                "UPDATE accounts a SET debits_posted = v.dp, credits_posted = v.cp "
                "FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS v(id, dp, cp) "
                "WHERE a.id = v.id",
                touched,
                [accounts[i].debits_posted for i in touched],
                [accounts[i].credits_posted for i in touched],
            )
        posted = [o.request for o in result.outcomes if isinstance(o, Posted)]
        if posted:
            await conn.execute(
                "INSERT INTO transfers (id, tenant_id, external_ref, kind, amount, currency, "
                "created_at) SELECT *, $7::timestamptz FROM unnest($1::text[], $2::text[], "
                "$3::text[], $4::text[], $5::bigint[], $6::text[])",
                [r.transfer_id for r in posted],
                [r.tenant_id for r in posted],
                [r.external_ref for r in posted],
                [r.kind for r in posted],
                [r.amount for r in posted],
                [r.currency for r in posted],
                now,
            )
            await self._append_entries(conn, posted, now)
        rejected = [o for o in result.outcomes if isinstance(o, Rejected)]
        if rejected:
            await conn.execute(
                "INSERT INTO rejections (tenant_id, external_ref, code) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
                [o.request.tenant_id for o in rejected],
                [o.request.external_ref for o in rejected],
                [o.code for o in rejected],
            )

    async def _append_entries(
        self, conn: asyncpg.Connection, posted: list[TransferRequest], now: datetime
    ) -> None:
        """Insert the legs of ``posted`` as entries chained after the current head.

        The head row is locked first and entry ids are drawn after it, so ids, seqs and
        hashes all follow one order even if two writers ever raced. This is the only
        path that writes entries; anything else would leave them unchained, which
        `paystream ledger verify` reports.
        """
        legs = [(r, leg) for r in posted for leg in r.legs]
        head = await conn.fetchrow("SELECT seq, hash FROM chain_head FOR UPDATE")
        assert head is not None, "chain_head has its one row from migration 002"
        ids = await conn.fetch(
            "SELECT nextval(pg_get_serial_sequence('entries', 'id')) AS id "
            "FROM generate_series(1, $1)",
            len(legs),
        )
        fields = [
            EntryFields(
                id=row["id"], transfer_id=r.transfer_id, account_id=leg.account_id,
                direction=leg.direction, amount=leg.amount, currency=r.currency, created_at=now,
            )
            for row, (r, leg) in zip(sorted(ids, key=lambda x: x["id"]), legs, strict=True)
        ]
        links = extend(head["seq"], bytes(head["hash"]), fields)
        await conn.execute(
            "INSERT INTO entries (id, transfer_id, account_id, direction, amount, currency, "
            "seq, prev_hash, hash, created_at) SELECT *, $10::timestamptz FROM unnest("
            "$1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], "
            "$7::bigint[], $8::bytea[], $9::bytea[])",
            [f.id for f in fields],
            [f.transfer_id for f in fields],
            [f.account_id for f in fields],
            [f.direction for f in fields],
            [f.amount for f in fields],
            [f.currency for f in fields],
            [link.seq for link in links],
            [link.prev_hash for link in links],
            [link.hash for link in links],
            now,
        )
        await conn.execute(
            "UPDATE chain_head SET seq = $1, hash = $2", links[-1].seq, links[-1].hash
        )
