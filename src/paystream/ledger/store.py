"""The ledger's SQL: accounts, set-based batch posting, entries.

Posting is two calls of functions of migration 007: ``ledger_lock`` loads the accounts a
batch touches, locking those that need a limit check in id order (so concurrent batches
never deadlock), and ``ledger_write`` writes every change of the decided batch, appending
the entries to one of the ledger's hash chains (`paystream.ledger.chain`) after locking
that chain's head. For a batch of plain transfers the lock statement also reads which of its
payments were decided (`LedgerStore.lock_accounts_with_decisions`), one round trip fewer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from paystream.contracts.api import Account, Balance
from paystream.contracts.bodies import Body
from paystream.contracts.ids import new_id
from paystream.ledger.domain import (
    AccountState,
    BatchResult,
    Direction,
    HoldState,
    NormalBalance,
    Posted,
    Rejected,
    TransferRequest,
)
from paystream.ledger.lookups import DECIDED_REFS, TransferLookups
from paystream.platform.outbox import OutboxRows

_ACCOUNT_COLUMNS = (
    "id, tenant_id, currency, kind, normal_balance, allow_overdraft, lower_limit, owner_user_id, "
    "metadata, debits_posted, credits_posted, debits_pending, credits_pending, created_at"
)

_HOLD_COLUMNS = (
    "h.transfer_id, h.tenant_id, t.external_ref, t.kind, h.debit_account_id, h.credit_account_id, "
    "h.amount, h.currency, h.status"
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
        lower_limit=row["lower_limit"],
    )


def _hold(row: Mapping[str, Any]) -> HoldState:
    return HoldState(
        transfer_id=row["transfer_id"], tenant_id=row["tenant_id"],
        external_ref=row["external_ref"], kind=row["kind"],
        debit_account_id=row["debit_account_id"], credit_account_id=row["credit_account_id"],
        amount=row["amount"], currency=row["currency"], status=row["status"],
    )


def _lock_arguments(
    account_ids: Iterable[str], moves: Iterable[tuple[str, Direction]] | None
) -> tuple[list[str], list[bool], list[bool]]:
    """``ledger_lock``'s ids (sorted: the lock order) and whether each may be debited, credited."""
    ids = sorted(set(account_ids))
    debited: set[str] = set()
    credited: set[str] = set()
    for account_id, direction in moves or ():
        (credited if direction == "credit" else debited).add(account_id)
    return ids, [i in debited for i in ids], [i in credited for i in ids]


def _locked_state(row: asyncpg.Record) -> AccountState:
    """An account as ``ledger_lock`` returns it: with its baseline when read without a lock."""
    # The columns are AccountState's first ten fields, in order (cheaper than by name).
    state = AccountState(*row[:10])
    if not row[10]:  # read without a lock
        state.baseline = (state.debits_posted, state.credits_posted,
                          state.debits_pending, state.credits_pending)
    state.folded = row[11]
    return state


def account_body(row: Mapping[str, Any]) -> Body:
    """The public account (`Account`) for a row, its balance computed from the running totals."""
    state = _state(row)
    balance = Balance.body(posted=state.posted, pending=state.pending, available=state.available)
    return Account.body(row, balance=balance)


class LedgerStore(TransferLookups):
    """SQL for the ledger schema; every method runs on the connection it is given.

    The writes and locks are here; the read-only lookups come from `TransferLookups`.
    """

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
        normal_balance: NormalBalance = "credit",
        lower_limit: int | None = None,
    ) -> asyncpg.Record:
        """A new wallet (or the one an earlier call with the same ``create_key`` made).

        ``lower_limit`` is only for overdraft accounts (a credit line); without overdraft
        the limit is 0.
        """
        await self.ensure_settlement(conn, tenant_id, currency)
        if not allow_overdraft:
            lower_limit = 0
        row = await conn.fetchrow(
            f"INSERT INTO accounts (id, tenant_id, currency, kind, normal_balance, "
            f"allow_overdraft, lower_limit, owner_user_id, metadata, create_key) "
            f"VALUES ($1, $2, $3, 'wallet', $4, $5, $6, $7, $8, $9) "
            f"ON CONFLICT (tenant_id, create_key) DO NOTHING RETURNING {_ACCOUNT_COLUMNS}",
            new_id("acc"), tenant_id, currency, normal_balance, allow_overdraft, lower_limit,
            owner_user_id, metadata, create_key,
        )
        if row is None:
            row = await conn.fetchrow(
                f"SELECT {_ACCOUNT_COLUMNS} FROM account_totals WHERE id = (SELECT id FROM accounts "
                f"WHERE tenant_id = $1 AND create_key = $2)",
                tenant_id, create_key,
            )
        assert row is not None
        return row

    async def ensure_settlement(self, conn: asyncpg.Connection, tenant_id: str, currency: str) -> None:
        """The tenant's settlement account for ``currency``: where deposits come from."""
        await self.ensure_system(conn, "settlement", [(tenant_id, currency)])

    async def ensure_system(
        self, conn: asyncpg.Connection, kind: str, pairs: Iterable[tuple[str, str]]
    ) -> None:
        """Make the tenants' ``kind`` accounts (settlement or exchange) for the currencies given.

        System accounts are debit-normal and have no lower limit: the platform's side of money
        entering, leaving or changing currency.
        """
        pairs = sorted(set(pairs))
        if not pairs:
            return
        await conn.execute(
            "INSERT INTO accounts (id, tenant_id, currency, kind, normal_balance, allow_overdraft, "
            "metadata) SELECT i, t, c, $4, 'debit', true, jsonb_build_object('system', $4::text) "
            "FROM unnest($1::text[], $2::text[], $3::text[]) AS p(i, t, c) ON CONFLICT DO NOTHING",
            [new_id("acc") for _ in pairs], [p[0] for p in pairs], [p[1] for p in pairs], kind,
        )

    async def get_account(
        self, conn: asyncpg.Connection, tenant_id: str, account_id: str
    ) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {_ACCOUNT_COLUMNS} FROM account_totals WHERE id = $1 AND tenant_id = $2 "
            "AND kind = 'wallet'",
            account_id, tenant_id,
        )

    async def settlement_ids(
        self, conn: asyncpg.Connection, pairs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """Settlement account ids by (tenant, currency), for the pairs that have one."""
        return await self.system_ids(conn, "settlement", pairs)

    async def system_ids(
        self, conn: asyncpg.Connection, kind: str, pairs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """The ids of the tenants' ``kind`` accounts by (tenant, currency), where one exists."""
        pairs = list(set(pairs))
        if not pairs:
            return {}
        rows = await conn.fetch(
            "SELECT a.id, a.tenant_id, a.currency FROM accounts a "
            "JOIN unnest($1::text[], $2::text[]) AS p(tenant_id, currency) "
            "ON a.tenant_id = p.tenant_id AND a.currency = p.currency AND a.kind = $3",
            [p[0] for p in pairs], [p[1] for p in pairs], kind,
        )
        return {(row["tenant_id"], row["currency"]): row["id"] for row in rows}

    async def lock_accounts(
        self,
        conn: asyncpg.Connection,
        account_ids: Iterable[str],
        moves: Iterable[tuple[str, Direction]] | None = None,
        *,
        tenant_id: str | None = None,
    ) -> dict[str, AccountState]:
        """Load the accounts a batch touches, locking those that need a check, in id order.

        One call of ``ledger_lock`` (migration 007). ``moves`` are the (account, direction)
        legs the batch may make. An account that may move against its normal side (all of
        them when ``moves`` is None) is locked ``FOR NO KEY UPDATE`` in id order, so
        concurrent batches cannot deadlock. An account that only moves on its normal side
        (credits to a wallet, debits to a settlement account) cannot pass its lower limit:
        it is locked only when no one else holds it, and otherwise read without a lock, its
        changes then written as balance deltas (migration 006), so many payers can pay one
        merchant at once. Every locked account has its deltas folded into it. With
        ``tenant_id``, only that tenant's wallets are loaded (the public API's view).
        """
        ids, debited, credited = _lock_arguments(account_ids, moves)
        rows = await conn.fetch(
            "SELECT * FROM ledger_lock($1::text[], $2::boolean[], $3::boolean[], $4, $5)",
            ids, debited, credited, moves is None, tenant_id,
        )
        return {state.id: state for state in map(_locked_state, rows)}

    async def lock_accounts_with_decisions(
        self,
        conn: asyncpg.Connection,
        refs: Iterable[tuple[str, str]],
        account_ids: Iterable[str],
        moves: Iterable[tuple[str, Direction]],
    ) -> tuple[set[tuple[str, str]], dict[str, AccountState]]:
        """`decisions` and `lock_accounts` in one round trip: which (tenant, external ref)
        pairs were decided, and the accounts, locked as ``lock_accounts`` locks them.

        For a batch that needs no hold locked (holds are locked before any account) and
        nothing else looked up before the lock. The decided refs are read with the
        statement's snapshot, taken before any lock wait, as the separate statement read
        them before the lock; a payment another transaction decides meanwhile still cannot
        be written twice (``transfers_by_ref`` is unique).
        """
        refs = list(refs)
        ids, debited, credited = _lock_arguments(account_ids, moves)
        rows = await conn.fetch(
            "SELECT l.*, NULL::text AS decided_ref "
            "FROM ledger_lock($3::text[], $4::boolean[], $5::boolean[], false, NULL) AS l "
            "UNION ALL SELECT NULL, d.tenant_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
            f"NULL, NULL, d.external_ref FROM ({DECIDED_REFS}) AS d",
            [r[0] for r in refs], [r[1] for r in refs], ids, debited, credited,
        )
        decided = set()
        accounts = {}
        for row in rows:
            if row[12] is not None:
                decided.add((row[1], row[12]))
            else:
                state = _locked_state(row)
                accounts[state.id] = state
        return decided, accounts

    async def wallets_for(
        self, conn: asyncpg.Connection, tenant_id: str, legs: Iterable[tuple[str, Direction]]
    ) -> dict[str, AccountState]:
        """`lock_accounts` for the public API: the tenant's wallets among the legs' accounts."""
        legs = list(legs)
        return await self.lock_accounts(conn, {a for a, _ in legs}, legs, tenant_id=tenant_id)

    async def fold_deltas(self, conn: asyncpg.Connection, limit: int) -> int:
        """Fold the balance deltas of up to ``limit`` accounts into their rows; how many."""
        ids = [r["account_id"] for r in await conn.fetch(
            "SELECT DISTINCT account_id FROM balance_deltas LIMIT $1", limit)]
        if not ids:
            return 0
        accounts = await self.lock_accounts(conn, ids)
        await self._write(conn, [a for a in accounts.values() if a.folded], [], [], None, None)
        return len(ids)

    async def write_batch(
        self,
        conn: asyncpg.Connection,
        accounts: dict[str, AccountState],
        result: BatchResult,
        now: datetime,
        *,
        record_rejections: bool = True,
        outbox: OutboxRows | None = None,
    ) -> None:
        """Persist a decided batch: balances, transfers, entries, holds, rejections, events.

        Balances, transfers, chained entries and the ``outbox`` rows go in one round trip
        (`ledger_write`, migration 007); holds and rejections, which the posting path seldom
        has, take a statement each when there are any. ``record_rejections`` remembers each
        refused transfer's external ref, so a replayed order is refused again (the pipeline's
        choice); the public API leaves nothing behind.
        """
        rows = [a for a in accounts.values()
                if a.baseline is None and (a.id in result.touched or a.folded)]
        buffered = [accounts[i] for i in sorted(result.touched) if accounts[i].baseline is not None]
        written = [o.request for o in result.outcomes if isinstance(o, Posted)]
        await self._write(conn, rows, buffered, written, now, outbox)
        await self._open_holds(conn, [r for r in written if r.phase == "pending"], now)
        if result.closed_holds:
            closed = sorted(result.closed_holds.items())
            await conn.execute(
                "UPDATE holds h SET status = v.status, closed_by = v.closed_by "
                "FROM unnest($1::text[], $2::text[], $3::text[]) AS v(id, status, closed_by) "
                "WHERE h.transfer_id = v.id",
                [hold_id for hold_id, _ in closed],
                [status for _, (status, _) in closed],
                [closer for _, (_, closer) in closed],
            )
        rejected = [
            o for o in result.outcomes
            if isinstance(o, Rejected) and isinstance(o.request, TransferRequest)
        ]
        if rejected and record_rejections:
            await conn.execute(
                "INSERT INTO rejections (tenant_id, external_ref, code) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
                [o.request.tenant_id for o in rejected],
                [o.request.external_ref for o in rejected],
                [o.code for o in rejected],
            )

    @staticmethod
    async def _write(
        conn: asyncpg.Connection,
        rows: list[AccountState],
        buffered: list[AccountState],
        written: list[TransferRequest],
        now: datetime | None,
        outbox: OutboxRows | None,
    ) -> None:
        """One call of `ledger_write`: absolute totals for the locked accounts (their deltas
        were folded into them), what the batch moved on the accounts read without a lock (as
        deltas), the transfers, their legs as entries (the function chains them), the events.
        """
        rows = sorted(rows, key=lambda a: a.id)
        deltas = []
        for a in buffered:
            assert a.baseline is not None
            dp, cp, dq, cq = a.baseline
            change = (a.debits_posted - dp, a.credits_posted - cp,
                      a.debits_pending - dq, a.credits_pending - cq)
            if any(change):
                deltas.append((a.id, *change))
        legs = [(r, leg) for r in written if r.writes_entries for leg in r.legs]
        outbox = outbox or OutboxRows([], [], [])
        if not (rows or deltas or written or outbox.event_ids):
            return
        delta_columns: list[list[Any]] = [list(c) for c in zip(*deltas, strict=True)] or [[]] * 5
        await conn.execute(
            "SELECT ledger_write($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], "
            "$6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], "
            "$11::text[], $12::text[], $13::text[], $14::text[], $15::bigint[], $16::text[], "
            "$17::text[], $18::text[], $19::text[], $20::text[], "
            "$21::text[], $22::text[], $23::text[], $24::bigint[], $25::text[], "
            "$26::text[], $27::text[], $28::bytea[], $29::timestamptz)",
            [a.id for a in rows],
            [a.debits_posted for a in rows],
            [a.credits_posted for a in rows],
            [a.debits_pending for a in rows],
            [a.credits_pending for a in rows],
            *delta_columns,
            [r.transfer_id for r in written],
            [r.tenant_id for r in written],
            [r.external_ref for r in written],
            [r.kind for r in written],
            [r.amount for r in written],
            [r.currency for r in written],
            [r.phase for r in written],
            [r.pending_id for r in written],
            [r.refund_of for r in written],
            [orjson.dumps(dict(r.metadata)).decode() for r in written],
            [r.transfer_id for r, _ in legs],
            [leg.account_id for _, leg in legs],
            [leg.direction for _, leg in legs],
            [leg.amount for _, leg in legs],
            [r.currency_of(leg) for r, leg in legs],
            outbox.event_ids,
            outbox.subjects,
            outbox.bodies,
            now,
        )

    async def _open_holds(
        self, conn: asyncpg.Connection, pending: list[TransferRequest], now: datetime
    ) -> None:
        if not pending:
            return
        debit = [next(leg for leg in r.legs if leg.direction == "debit") for r in pending]
        credit = [next(leg for leg in r.legs if leg.direction == "credit") for r in pending]
        await conn.execute(
            "INSERT INTO holds (transfer_id, tenant_id, debit_account_id, credit_account_id, "
            "amount, currency, expires_at, created_at) SELECT *, $8::timestamptz FROM unnest("
            "$1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], "
            "$7::timestamptz[])",
            [r.transfer_id for r in pending],
            [r.tenant_id for r in pending],
            [leg.account_id for leg in debit],
            [leg.account_id for leg in credit],
            [leg.amount for leg in debit],
            [r.currency for r in pending],
            [None if r.timeout_seconds is None else now + timedelta(seconds=r.timeout_seconds)
             for r in pending],
            now,
        )

    async def lock_holds(
        self, conn: asyncpg.Connection, hold_ids: Iterable[str]
    ) -> dict[str, HoldState]:
        """Lock the holds in id order (before any account, always) and load them."""
        hold_ids = sorted(set(hold_ids))
        if not hold_ids:
            return {}
        rows = await conn.fetch(
            f"SELECT {_HOLD_COLUMNS} FROM holds h JOIN transfers t ON t.id = h.transfer_id "
            "WHERE h.transfer_id = ANY($1::text[]) ORDER BY h.transfer_id FOR UPDATE OF h",
            hold_ids,
        )
        return {row["transfer_id"]: _hold(row) for row in rows}

    async def due_holds(self, conn: asyncpg.Connection, now: datetime, limit: int) -> dict[str, HoldState]:
        """Lock up to ``limit`` pending holds whose timeout has passed; skips those in use."""
        rows = await conn.fetch(
            f"SELECT {_HOLD_COLUMNS} FROM holds h JOIN transfers t ON t.id = h.transfer_id "
            "WHERE h.status = 'pending' AND h.expires_at <= $1 "
            "ORDER BY h.transfer_id LIMIT $2 FOR UPDATE OF h SKIP LOCKED",
            now, limit,
        )
        return {row["transfer_id"]: _hold(row) for row in rows}
