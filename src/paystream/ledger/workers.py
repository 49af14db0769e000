"""The ledger's background workers: the hold sweeper and the balance-delta folder.

Both run a batch at a time on a timer (`platform.runtime.repeat`), started by
`ledger.service` next to the event consumer.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from paystream.contracts.envelope import make_envelope
from paystream.contracts.ids import new_id
from paystream.ledger.domain import Book, HoldAction, Posted
from paystream.ledger.orders import expired_payment
from paystream.ledger.store import LedgerStore
from paystream.platform.observability import get_logger, held_until_commit, log_on_commit
from paystream.platform.outbox import Outbox
from paystream.platform.runtime import repeat

log = get_logger(__name__)


class DeltaFolder:
    """Folds balance deltas (migration 006) into their accounts' rows in the background, so an
    account that is only ever paid into does not collect deltas without end."""

    def __init__(self, pool: asyncpg.Pool, store: LedgerStore, *, interval: float = 2.0,
                 batch: int = 500) -> None:
        self._pool = pool
        self._store = store
        self._interval = interval
        self._batch = batch

    async def fold_once(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            return await self._store.fold_deltas(conn, self._batch)

    async def run(self, stopping: asyncio.Event) -> None:
        await repeat(stopping, self.fold_once, interval=self._interval, backlog=self._batch,
                     failed="delta_fold_failed")


class HoldSweeper:
    """Expires holds past their timeout: the ledger voids them itself, a batch at a time.

    A payment whose review hold expires fails with ``review_expired``; a hold made through
    the public API just closes (its owner sees ``status: expired``).
    """

    def __init__(self, pool: asyncpg.Pool, store: LedgerStore, outbox: Outbox, *,
                 interval: float = 1.0, batch: int = 500) -> None:
        self._pool = pool
        self._store = store
        self._outbox = outbox
        self._interval = interval
        self._batch = batch

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Expire what is due at ``now``; returns how many holds expired."""
        now = now or datetime.now(UTC)
        with held_until_commit():
            return await self._expire(now)

    async def _expire(self, now: datetime) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            holds = await self._store.due_holds(conn, now, self._batch)
            if not holds:
                return 0
            accounts = await self._store.lock_accounts(
                conn, {a for h in holds.values() for a in (h.debit_account_id, h.credit_account_id)}
            )
            book = Book(accounts, holds)
            events = []
            for hold in holds.values():
                outcome = book.act_on_hold(HoldAction(new_id("trf"), hold.tenant_id,
                                                      hold.external_ref, hold.transfer_id, "expire"))
                failed = expired_payment(hold) if isinstance(outcome, Posted) else None
                if failed is not None:
                    event, key = failed
                    log_on_commit(log, "ledger_hold_expired", payment_id=hold.external_ref)
                    events.append(make_envelope(event, partition_key=key,
                                                correlation_id=hold.external_ref))
            await self._store.write_batch(conn, accounts, book.result, now,
                                          outbox=self._outbox.rows(events))
            return len(holds)

    async def run(self, stopping: asyncio.Event) -> None:
        await repeat(stopping, self.sweep_once, interval=self._interval, failed="hold_sweep_failed")
