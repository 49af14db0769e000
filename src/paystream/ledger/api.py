"""Internal HTTP routes of the ledger (the gateway forwards ``/v1/accounts`` here)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Query

from paystream.contracts.api import AccountCreate, Entry, HoldPost, TransferCreate
from paystream.contracts.bodies import Body
from paystream.ledger.store import LedgerStore, account_body
from paystream.ledger.transfers import KIND, TransferService, public_ref
from paystream.platform.errors import Invalid, NotFound
from paystream.platform.http import Caller, InternalAuth, JSONResponse


def _entry_body(row: asyncpg.Record) -> Body:
    """The public entry (`Entry`): a public id, and the payment or external ref it came from."""
    direct = row["kind"] == KIND  # a transfer made through /v1/transfers, not by a payment
    return Entry.body(
        row,
        id=f"ent_{row['id']}",
        payment_id=None if direct else row["external_ref"].split(":")[0],
        external_ref=public_ref(row["external_ref"]) if direct else None,
    )


def _entry_seq(value: str | None) -> int | None:
    if value is None:
        return None
    digits = value.removeprefix("ent_")
    if not value.startswith("ent_") or not digits.isdigit() or len(digits) > 18:
        raise Invalid("starting_after must be an entry id such as ent_123", code="invalid_cursor")
    return int(digits)


def install_routes(app: FastAPI, pool: asyncpg.Pool, store: LedgerStore, auth: InternalAuth) -> None:
    router = APIRouter(prefix="/internal")

    async def visible_account(conn: asyncpg.Connection, caller: Caller, account_id: str) -> asyncpg.Record:
        row = await store.get_account(conn, caller.tenant_id, account_id)
        if row is None or (caller.user_id and row["owner_user_id"] != caller.user_id):
            raise NotFound(f"no account {account_id}", code="account_not_found")
        return row

    @router.post("/accounts", status_code=201)
    async def create_account(body: AccountCreate, caller: Caller = Depends(auth)) -> JSONResponse:
        owner = body.owner_user_id
        if caller.user_id:
            owner = caller.user_id
        async with pool.acquire() as conn, conn.transaction():
            row = await store.create_account(
                conn,
                tenant_id=caller.tenant_id,
                currency=body.currency,
                allow_overdraft=body.allow_overdraft,
                owner_user_id=owner,
                metadata=body.metadata,
                create_key=caller.idempotency_key,
                normal_balance=body.normal_balance,
                lower_limit=body.lower_limit,
            )
        return JSONResponse(account_body(row), status_code=201)

    @router.get("/accounts/{account_id}")
    async def get_account(
        account_id: str,
        caller: Caller = Depends(auth),
        as_of: Annotated[str | None, Query(max_length=64,
                                           description="the balance as it stood at this instant")] = None,
    ) -> JSONResponse:
        instant = None if as_of is None else _instant(as_of)
        async with pool.acquire() as conn:
            row = await visible_account(conn, caller, account_id)
            if instant is None:
                return JSONResponse(account_body(row))
            debits, credits = await store.posted_as_of(conn, account_id, instant)
        # Entries are the truth the running totals summarise; nothing was pending then.
        then = {**dict(row), "debits_posted": debits, "credits_posted": credits,
                "debits_pending": 0, "credits_pending": 0}
        return JSONResponse(account_body(then))

    @router.get("/accounts/{account_id}/entries")
    async def list_entries(
        account_id: str,
        caller: Caller = Depends(auth),
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        starting_after: Annotated[str | None, Query(max_length=40)] = None,
    ) -> JSONResponse:
        before = _entry_seq(starting_after)
        async with pool.acquire() as conn:
            await visible_account(conn, caller, account_id)
            rows = await store.list_entries(conn, account_id, limit=limit, before_seq=before)
        return JSONResponse(
            {"data": [_entry_body(r) for r in rows[:limit]], "has_more": len(rows) > limit}
        )

    transfers = TransferService(pool, store)

    @router.post("/transfers", status_code=201)
    async def create_transfer(body: TransferCreate, caller: Caller = Depends(auth)) -> JSONResponse:
        transfer, created = await transfers.create(caller.tenant_id, body)
        return JSONResponse(transfer, status_code=201 if created else 200)

    @router.get("/transfers/{transfer_id}")
    async def get_transfer(transfer_id: str, caller: Caller = Depends(auth)) -> JSONResponse:
        async with pool.acquire() as conn:
            return JSONResponse(await transfers.view(conn, caller.tenant_id, transfer_id))

    @router.post("/transfers/{transfer_id}/post")
    async def post_hold(
        transfer_id: str, body: HoldPost | None = None, caller: Caller = Depends(auth)
    ) -> JSONResponse:
        amount = body.amount if body is not None else None
        return JSONResponse(await transfers.act(caller.tenant_id, transfer_id, "post", amount))

    @router.post("/transfers/{transfer_id}/void")
    async def void_hold(transfer_id: str, caller: Caller = Depends(auth)) -> JSONResponse:
        return JSONResponse(await transfers.act(caller.tenant_id, transfer_id, "void"))

    app.include_router(router)


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})")


def _instant(text: str) -> datetime:
    """An RFC 3339 timestamp with its zone. Nothing looser: a bare number (read elsewhere as
    seconds since 1970) or a date alone would give a balance for some other instant than meant."""
    if not _RFC3339.fullmatch(text):
        raise Invalid("as_of must be an RFC 3339 timestamp with a zone, e.g. 2026-11-21T12:00:00Z",
                      code="invalid_as_of")
    try:
        return datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:  # well formed, but no such instant (month 13, say)
        raise Invalid(f"as_of {text!r} is not a real instant", code="invalid_as_of") from None
