"""Internal HTTP routes of payments (the gateway forwards ``/v1/payments`` and ``/v1/deposits``)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

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
from paystream.contracts.ids import has_prefix, new_id
from paystream.contracts.money import MAX_AMOUNT, convert
from paystream.payments.directory import AccountDirectory
from paystream.payments.handlers import PaymentHandlers
from paystream.payments.store import DirectoryEntry, PaymentsStore
from paystream.platform.errors import DomainError, Invalid, NotFound
from paystream.platform.http import Caller, InternalAuth, JSONResponse


def _exchange(values: dict[str, Any], accounts: dict[str, DirectoryEntry]) -> dict[str, Any]:
    """Check the accounts' currencies; across currencies, what the destination receives."""
    rate = values.pop("exchange_rate", None)
    source, destination = values["source_account_id"], values["destination_account_id"]
    currency = values["currency"]
    if source and accounts[source].currency != currency:
        raise Invalid(f"account {source} holds {accounts[source].currency}, not {currency}",
                      code="currency_mismatch")
    theirs = accounts[destination].currency
    if rate is None:
        if theirs != currency:
            raise Invalid(f"account {destination} holds {theirs}, not {currency}; give an "
                          "exchange_rate to pay across currencies", code="currency_mismatch")
        return {}
    if theirs == currency:
        raise Invalid(f"account {destination} holds {currency} too: an exchange_rate is only "
                      "for accounts of different currencies", code="exchange_rate_not_needed")
    if source is None:
        raise Invalid("deposits are made in the account's currency", code="currency_mismatch")
    parsed = Decimal(rate)
    received = convert(values["amount"], currency, theirs, parsed)
    if parsed <= 0 or received < 1:
        raise Invalid(f"at {rate} the destination would receive nothing", code="amount_too_small")
    if received > MAX_AMOUNT:
        raise Invalid("the converted amount is too large", code="amount_too_large")
    return {"destination_amount": received, "destination_currency": theirs, "exchange_rate": parsed}


def refund_amount(original: asyncpg.Record, claimed: int, asked: int | None) -> int:
    """How much a new refund of ``original`` moves; 422 when it cannot be refunded that much.

    ``claimed`` is what its refunds that are not failed or declined already add up to.
    """
    if original["kind"] == "refund":
        raise Invalid("a refund cannot be refunded", code="payment_not_refundable")
    if original["status"] != "succeeded":
        raise Invalid(f"only a succeeded payment can be refunded; this one is {original['status']}",
                      code="payment_not_refundable")
    left = original["amount"] - claimed
    if left <= 0:
        raise Invalid("the payment has been refunded in full", code="refund_exceeds_payment")
    amount = left if asked is None else asked
    if amount > left:
        raise Invalid(f"only {left} of the payment is left to refund", code="refund_exceeds_payment")
    return amount


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
            if account_id not in accounts:
                raise NotFound(f"no account {account_id}", code="account_not_found")
        values |= _exchange(values, accounts)
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
                "exchange_rate": body.exchange_rate,
                "description": body.description,
                "metadata": body.metadata,
            },
        )

    @router.post("/payments/{payment_id}/refunds", status_code=202)
    async def create_refund(
        payment_id: str, body: RefundCreate | None = None, caller: Caller = Depends(auth)
    ) -> JSONResponse:
        if not caller.idempotency_key:
            raise MissingIdempotencyKey("an Idempotency-Key header is required")
        body = body or RefundCreate()
        key = f"{caller.client_id}:{caller.idempotency_key}"
        async with pool.acquire() as conn, conn.transaction():
            replay = await store.by_idempotency_key(conn, caller.tenant_id, key)
            if replay is not None:
                return JSONResponse(Payment.body(replay), status_code=202)
            await visible_payment(conn, caller, payment_id, owning="destination_account_id")
            original = await store.lock_one(conn, caller.tenant_id, payment_id)
            assert original is not None
            claimed = await store.refunds_claimed(conn, payment_id)
            amount = refund_amount(original, claimed, body.amount)
            values = {
                "id": new_id("pay"),
                "kind": "refund",
                "tenant_id": caller.tenant_id,
                "client_id": caller.client_id,
                "idempotency_key": key,
                "created_at": datetime.now(UTC),
                "source_account_id": original["destination_account_id"],
                "destination_account_id": original["source_account_id"],
                "amount": amount,
                "currency": original["currency"],
                "refund_of": payment_id,
                "description": body.description,
                "metadata": body.metadata,
            }
            payment, _ = await handlers.create(conn, values, caller.correlation_id)
        return JSONResponse(payment, status_code=202)

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

    async def visible_payment(
        conn: asyncpg.Connection, caller: Caller, payment_id: str, owning: str | None = None
    ) -> asyncpg.Record:
        """The payment, if the caller may see it: a user sees payments touching their accounts
        (with ``owning``, only those whose account in that column is theirs)."""
        row = await store.get(conn, caller.tenant_id, payment_id)
        if row is not None and caller.user_id:
            columns = (owning,) if owning else ("source_account_id", "destination_account_id")
            touched = [row[c] for c in columns if row[c]]
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
        return JSONResponse(Payment.body(row))

    @router.get("/payments/{payment_id}/events")
    async def payment_timeline(payment_id: str, caller: Caller = Depends(auth)) -> JSONResponse:
        async with pool.acquire() as conn:
            await visible_payment(conn, caller, payment_id)
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
