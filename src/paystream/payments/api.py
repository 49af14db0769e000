"""Internal HTTP routes of payments (the gateway forwards ``/v1/payments`` and ``/v1/deposits``)."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Query

from paystream.contracts.api import (
    DepositCreate,
    Payment,
    PaymentCreate,
    PaymentEvent,
    PaymentStatus,
    RefundCreate,
)
from paystream.contracts.ids import AccountId, has_prefix
from paystream.contracts.money import Money
from paystream.payments.domain import PaymentRequest
from paystream.payments.handlers import PaymentHandlers
from paystream.payments.store import PaymentsStore
from paystream.platform.errors import DomainError, Invalid
from paystream.platform.http import Caller, InternalAuth, JSONResponse


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
    auth: InternalAuth,
) -> None:
    router = APIRouter(prefix="/internal")

    def require_key(caller: Caller) -> None:
        if not caller.idempotency_key:
            raise MissingIdempotencyKey("an Idempotency-Key header is required")

    @router.post("/payments", status_code=202)
    async def create_payment(body: PaymentCreate, caller: Caller = Depends(auth)) -> JSONResponse:
        require_key(caller)
        request = PaymentRequest(
            kind="transfer",
            source_account_id=AccountId(body.source_account_id),
            destination_account_id=AccountId(body.destination_account_id),
            amount=Money(body.amount, body.currency),
            exchange_rate=body.exchange_rate,
            description=body.description,
            metadata=body.metadata,
        )
        return JSONResponse(await handlers.create_payment(caller, request), status_code=202)

    @router.post("/payments/{payment_id}/refunds", status_code=202)
    async def create_refund(
        payment_id: str, body: RefundCreate | None = None, caller: Caller = Depends(auth)
    ) -> JSONResponse:
        require_key(caller)
        body = body or RefundCreate()
        payment = await handlers.create_refund(
            caller, payment_id,
            amount=body.amount, description=body.description, metadata=body.metadata,
        )
        return JSONResponse(payment, status_code=202)

    @router.post("/deposits", status_code=202)
    async def create_deposit(body: DepositCreate, caller: Caller = Depends(auth)) -> JSONResponse:
        require_key(caller)
        request = PaymentRequest(
            kind="deposit",
            source_account_id=None,
            destination_account_id=AccountId(body.account_id),
            amount=Money(body.amount, body.currency),
            description=body.description,
            metadata=body.metadata,
        )
        return JSONResponse(await handlers.create_payment(caller, request), status_code=202)

    @router.get("/payments/{payment_id}")
    async def get_payment(payment_id: str, caller: Caller = Depends(auth)) -> JSONResponse:
        async with pool.acquire() as conn:
            row = await handlers.visible_payment(conn, caller, payment_id)
        return JSONResponse(Payment.body(row))

    @router.get("/payments/{payment_id}/events")
    async def payment_timeline(payment_id: str, caller: Caller = Depends(auth)) -> JSONResponse:
        async with pool.acquire() as conn:
            await handlers.visible_payment(conn, caller, payment_id)
            rows = await store.timeline(conn, payment_id)
        return JSONResponse({"data": [PaymentEvent.body(r) for r in rows], "has_more": False})

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
            {"data": [Payment.body(r) for r in rows[:limit]], "has_more": len(rows) > limit}
        )

    app.include_router(router)
