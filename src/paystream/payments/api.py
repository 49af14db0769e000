"""Internal HTTP routes of payments (the gateway forwards ``/v1/payments`` and ``/v1/deposits``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Query

from paystream.contracts.api import DepositCreate, PaymentCreate, PaymentStatus
from paystream.payments.directory import AccountDirectory
from paystream.payments.handlers import PaymentHandlers
from paystream.payments.store import PaymentsStore, payment_view
from paystream.platform.errors import DomainError, Invalid, NotFound
from paystream.platform.http import Caller, InternalAuth, JSONResponse
from paystream.platform.ids import has_prefix, new_id


class MissingIdempotencyKey(DomainError):
    status = 400
    code = "idempotency_key_required"
    title = "Idempotency-Key required"


def install_routes(
    app: FastAPI,
    *,
    pool: asyncpg.Pool,
    store: PaymentsStore,
    handlers: PaymentHandlers,
    directory: AccountDirectory,
    auth: InternalAuth,
) -> None:
    router = APIRouter(prefix="/internal")

    async def create(caller: Caller, values: dict[str, Any]) -> JSONResponse:
        if not caller.idempotency_key:
            raise MissingIdempotencyKey("an Idempotency-Key header is required")
        wanted = [a for a in (values["source_account_id"], values["destination_account_id"]) if a]
        if len(set(wanted)) < len(wanted):
            raise Invalid("source and destination must be different accounts", code="same_account")
        accounts = await directory.lookup(caller, wanted)
        for account_id in wanted:
            entry = accounts.get(account_id)
            if entry is None:
                raise NotFound(f"no account {account_id}", code="account_not_found")
            if entry.currency != values["currency"]:
                raise Invalid(
                    f"account {account_id} holds {entry.currency}, not {values['currency']}",
                    code="currency_mismatch",
                )
        source = values["source_account_id"]
        if caller.user_id and source and accounts[source].owner_user_id != caller.user_id:
            raise NotFound(f"no account {source}", code="account_not_found")
        values |= {
            "id": new_id("pay"),
            "tenant_id": caller.tenant_id,
            "client_id": caller.client_id,
            "idempotency_key": f"{caller.client_id}:{caller.idempotency_key}",
            "created_at": datetime.now(UTC),
        }
        async with pool.acquire() as conn:
            payment, _ = await handlers.create(conn, values, caller.correlation_id)
        return JSONResponse(payment, status_code=202)

    @router.post("/payments", status_code=202)
    async def create_payment(body: PaymentCreate, caller: Caller = Depends(auth)) -> JSONResponse:
        return await create(
            caller,
            {
                "kind": "transfer",
                "source_account_id": body.source_account_id,
                "destination_account_id": body.destination_account_id,
                "amount": body.amount,
                "currency": body.currency,
                "description": body.description,
                "metadata": body.metadata,
            },
        )

    @router.post("/deposits", status_code=202)
    async def create_deposit(body: DepositCreate, caller: Caller = Depends(auth)) -> JSONResponse:
        return await create(
            caller,
            {
                "kind": "deposit",
                "source_account_id": None,
                "destination_account_id": body.account_id,
                "amount": body.amount,
                "currency": body.currency,
                "description": body.description,
                "metadata": body.metadata,
            },
        )

    async def visible_payment(conn: asyncpg.Connection, caller: Caller, payment_id: str) -> asyncpg.Record:
        row = await store.get(conn, caller.tenant_id, payment_id)
        if row is not None and caller.user_id:
            touched = [a for a in (row["source_account_id"], row["destination_account_id"]) if a]
            owners = await store.directory_get(conn, touched)
            if not any(e.owner_user_id == caller.user_id for e in owners.values()):
                row = None
        if row is None:
            raise NotFound(f"no payment {payment_id}", code="payment_not_found")
        return row

    @router.get("/payments/{payment_id}")
    async def get_payment(payment_id: str, caller: Caller = Depends(auth)) -> JSONResponse:
        async with pool.acquire() as conn:
            row = await visible_payment(conn, caller, payment_id)
        return JSONResponse(payment_view(row))

    @router.get("/payments/{payment_id}/events")
    async def payment_timeline(payment_id: str, caller: Caller = Depends(auth)) -> JSONResponse:
        async with pool.acquire() as conn:
            await visible_payment(conn, caller, payment_id)
            rows = await store.timeline(conn, payment_id)
        return JSONResponse({"data": [dict(r) for r in rows], "has_more": False})

    @router.get("/payments")
    async def list_payments(
        caller: Caller = Depends(auth),
        account_id: Annotated[str | None, Query(max_length=64)] = None,
        status: PaymentStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        starting_after: Annotated[str | None, Query(max_length=64)] = None,
    ) -> JSONResponse:
        if starting_after is not None and not has_prefix(starting_after, "pay"):
            raise Invalid("starting_after must be a payment id", code="invalid_cursor")
        async with pool.acquire() as conn:
            rows = await store.list(
                conn,
                tenant_id=caller.tenant_id,
                user_id=caller.user_id,
                account_id=account_id,
                status=status,
                before_id=starting_after,
                limit=limit,
            )
        return JSONResponse(
            {"data": [payment_view(r) for r in rows[:limit]], "has_more": len(rows) > limit}
        )

    app.include_router(router)
