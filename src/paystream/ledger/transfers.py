"""Transfers and holds asked for directly through the public API (``/v1/transfers``).

Each request is one database transaction over the same posting path the pipeline uses
(lock, `Book`, `LedgerStore.write_batch`), decided synchronously: a refused transfer
answers 422 with its reason and writes nothing. External refs are kept apart from
payment ids (stored as ``ext:<ref>``), so neither can shadow the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import stamina

from paystream.contracts.api import Transfer, TransferCreate, TransferLeg
from paystream.contracts.bodies import Body
from paystream.contracts.ids import new_id
from paystream.ledger.domain import Book, HoldAction, HoldVerb, Leg, Posted, Rejected, TransferRequest
from paystream.ledger.store import LedgerStore
from paystream.platform.errors import Conflict, Invalid, NotFound

KIND = "ledger"
_PREFIX = "ext:"
T = TypeVar("T")

# Lock order (holds, then accounts by id, then the chain head) rules out deadlocks between
# our own writers; a retry covers anything else that ever picks a different order.
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


def stored_ref(external_ref: str) -> str:
    return _PREFIX + external_ref


def public_ref(stored: str) -> str:
    return stored.removeprefix(_PREFIX)


class TransferRefused(Invalid):
    """The ledger refused the transfer; ``code`` says why (e.g. ``insufficient_funds``)."""


def transfer_body(row: asyncpg.Record, legs: list[asyncpg.Record]) -> Body:
    """The public transfer (`Transfer`); a hold, which has no posted legs, shows its pending two."""
    bodies = [TransferLeg.body(leg) for leg in legs]
    if not bodies and row["debit_account_id"] is not None:
        bodies = [
            TransferLeg.body(account_id=row["debit_account_id"], direction="debit",
                             amount=row["hold_amount"], currency=row["currency"]),
            TransferLeg.body(account_id=row["credit_account_id"], direction="credit",
                             amount=row["hold_amount"], currency=row["currency"]),
        ]
    return Transfer.body(
        row,
        external_ref=public_ref(row["external_ref"]),
        status=row["hold_status"] or "posted",
        legs=bodies,
    )


class TransferService:
    def __init__(self, pool: asyncpg.Pool, store: LedgerStore) -> None:
        self._pool = pool
        self._store = store

    async def _in_transaction(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async for attempt in stamina.retry_context(on=_RETRYABLE, attempts=5, wait_initial=0.01):
            with attempt:
                async with self._pool.acquire() as conn, conn.transaction():
                    return await work(conn)
        raise AssertionError("unreachable: stamina re-raises after the last attempt")

    async def view(self, conn: asyncpg.Connection, tenant_id: str, transfer_id: str) -> dict[str, Any]:
        row = await self._store.get_transfer(conn, tenant_id, transfer_id)
        if row is None or row["kind"] != KIND:
            raise NotFound(f"no transfer {transfer_id}", code="transfer_not_found")
        legs = await self._store.transfer_legs(conn, [transfer_id])
        return transfer_body(row, legs)

    async def create(self, tenant_id: str, body: TransferCreate) -> tuple[dict[str, Any], bool]:
        """Post (or hold) the transfer; returns (transfer, created).

        The same external ref with the same legs returns the first transfer (created False);
        with anything else, 409.
        """
        request = TransferRequest(
            transfer_id=new_id("trf"),
            tenant_id=tenant_id,
            external_ref=stored_ref(body.external_ref),
            kind=KIND,
            currency=body.currency,
            legs=tuple(Leg(leg.account_id, leg.direction, leg.amount, leg.currency) for leg in body.legs),
            phase="pending" if body.pending else "posted",
            metadata=body.metadata,
            timeout_seconds=body.timeout_seconds,
        )

        async def work(conn: asyncpg.Connection) -> tuple[dict[str, Any], bool]:
            existing = await self._store.transfer_by_ref(conn, tenant_id, request.external_ref)
            if existing is not None:
                return await self._replay(conn, tenant_id, existing, request), False
            accounts = await self._store.wallets_for(
                conn, tenant_id, [(leg.account_id, leg.direction) for leg in request.legs]
            )
            book = Book(accounts)
            outcome = book.transfer(request)
            if isinstance(outcome, Rejected):
                raise TransferRefused(outcome.detail, code=outcome.code)
            await self._store.write_batch(conn, accounts, book.result, datetime.now(UTC),
                                          record_rejections=False)
            return await self.view(conn, tenant_id, request.transfer_id), True

        return await self._in_transaction(work)

    async def _replay(
        self, conn: asyncpg.Connection, tenant_id: str, transfer_id: str, request: TransferRequest
    ) -> dict[str, Any]:
        first = await self.view(conn, tenant_id, transfer_id)
        wanted = sorted((leg.account_id, leg.direction, leg.amount, request.currency_of(leg))
                        for leg in request.legs)
        had = sorted((leg["account_id"], leg["direction"], leg["amount"], leg["currency"])
                     for leg in first["legs"])
        same_phase = (first["phase"] == "pending") == (request.phase == "pending")
        if had != wanted or not same_phase:
            raise Conflict(f"external_ref {public_ref(request.external_ref)} already names "
                           f"transfer {transfer_id}, with other legs", code="external_ref_conflict")
        return first

    async def act(
        self, tenant_id: str, hold_id: str, verb: HoldVerb, amount: int | None = None
    ) -> dict[str, Any]:
        """Post or void the hold ``hold_id``; returns the hold as it now stands."""

        async def work(conn: asyncpg.Connection) -> dict[str, Any]:
            holds = await self._store.lock_holds(conn, [hold_id])
            hold = holds.get(hold_id)
            if hold is None or hold.tenant_id != tenant_id or hold.kind != KIND:
                raise NotFound(f"no pending transfer {hold_id}", code="transfer_not_found")
            accounts = await self._store.lock_accounts(
                conn, {hold.debit_account_id, hold.credit_account_id}
            )
            book = Book(accounts, holds)
            outcome = book.act_on_hold(
                HoldAction(new_id("trf"), tenant_id, hold.external_ref, hold_id, verb, amount)
            )
            if isinstance(outcome, Rejected):
                raise TransferRefused(outcome.detail, code=outcome.code)
            assert isinstance(outcome, Posted)
            await self._store.write_batch(conn, accounts, book.result, datetime.now(UTC),
                                          record_rejections=False)
            return await self.view(conn, tenant_id, hold_id)

        return await self._in_transaction(work)
