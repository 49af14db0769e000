"""Internal HTTP routes of fraud: the review queue (the gateway forwards ``/v1/reviews``)."""

from __future__ import annotations

from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Body, Depends, FastAPI, Query

from paystream.contracts.api import ReviewDecision
from paystream.fraud.handlers import FraudHandlers
from paystream.fraud.store import FraudStore, review_view
from paystream.platform.errors import Invalid
from paystream.platform.http import Caller, InternalAuth, JSONResponse
from paystream.platform.ids import has_prefix


def install_routes(
    app: FastAPI, *, pool: asyncpg.Pool, store: FraudStore, handlers: FraudHandlers, auth: InternalAuth
) -> None:
    router = APIRouter(prefix="/internal")

    @router.get("/reviews")
    async def list_reviews(
        caller: Caller = Depends(auth),
        status: Literal["open", "approved", "declined"] | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        starting_after: Annotated[str | None, Query(max_length=64)] = None,
    ) -> JSONResponse:
        if starting_after is not None and not has_prefix(starting_after, "rev"):
            raise Invalid("starting_after must be a review id", code="invalid_cursor")
        async with pool.acquire() as conn:
            rows = await store.list_reviews(
                conn, tenant_id=caller.tenant_id, status=status, before_id=starting_after,
                limit=limit,
            )
        return JSONResponse(
            {"data": [review_view(r) for r in rows[:limit]], "has_more": len(rows) > limit}
        )

    async def decide(caller: Caller, review_id: str, approve: bool, body: ReviewDecision | None) -> JSONResponse:
        async with pool.acquire() as conn:
            review = await handlers.decide_review(
                conn,
                tenant_id=caller.tenant_id,
                review_id=review_id,
                approve=approve,
                decided_by=caller.user_id or caller.client_id,
                note=body.note if body else None,
                correlation_id=caller.correlation_id,
            )
        return JSONResponse(review)

    @router.post("/reviews/{review_id}/approve")
    async def approve(
        review_id: str, caller: Caller = Depends(auth), body: Annotated[ReviewDecision | None, Body()] = None
    ) -> JSONResponse:
        return await decide(caller, review_id, True, body)

    @router.post("/reviews/{review_id}/decline")
    async def decline(
        review_id: str, caller: Caller = Depends(auth), body: Annotated[ReviewDecision | None, Body()] = None
    ) -> JSONResponse:
        return await decide(caller, review_id, False, body)

    app.include_router(router)
