"""Internal HTTP routes of fraud: the review queue (the gateway forwards ``/v1/reviews``),
the deadline reviews payments hands over, and the game-day fault switch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import asyncpg
import msgspec
from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from paystream.contracts.api import FraudReport, FraudReportCreate, Review, ReviewDecision
from paystream.contracts.ids import has_prefix
from paystream.contracts.internal import DeadlineReviews, DecisionLookup, DecisionsFound
from paystream.fraud.handlers import FraudHandlers
from paystream.fraud.store import FraudStore
from paystream.platform.errors import Invalid
from paystream.platform.http import Caller, InternalAuth, JSONResponse
from paystream.platform.observability import get_logger

log = get_logger(__name__)


class Faults(BaseModel):
    """Faults of this fraud service (every copy shares them): each screening decision
    waits ``decision_delay_ms`` first. For game days; 0 is normal."""

    model_config = ConfigDict(extra="forbid")
    decision_delay_ms: StrictInt = Field(ge=0, le=600_000)


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
            {"data": [Review.body(r) for r in rows[:limit]], "has_more": len(rows) > limit}
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

    @router.post("/payments/{payment_id}/fraud_report")
    async def fraud_report(payment_id: str, body: FraudReportCreate, caller: Caller = Depends(auth)) -> JSONResponse:
        async with pool.acquire() as conn:
            report, created = await handlers.report_fraud(
                conn, tenant_id=caller.tenant_id, payment_id=payment_id, reason=body.reason, note=body.note,
                reported_by=caller.user_id or caller.client_id,
            )
        return JSONResponse(FraudReport.model_validate(report).model_dump(mode="json"),
                            status_code=201 if created else 200)

    @router.post("/reviews/deadline", status_code=204)
    async def deadline_reviews(request: Request, _: Caller = Depends(auth)) -> None:
        """Reviews payments opened because fraud missed the screening deadline (payments'
        deadline worker sends them, again until it gets a 2xx)."""
        try:
            body = msgspec.json.decode(await request.body(), type=DeadlineReviews)
        except msgspec.ValidationError as exc:
            raise Invalid(f"not a list of deadline reviews: {exc}", code="invalid_request") from exc
        async with pool.acquire() as conn:
            await handlers.open_deadline_reviews(conn, body.reviews, datetime.now(UTC))

    @router.post("/decisions/lookup")
    async def lookup_decisions(request: Request, _: Caller = Depends(auth)) -> Response:
        """Which payments fraud has decided: payments asks before its screening deadline
        sends a payment to review, so a decision that is only slow to reach it is not
        taken for fraud being late."""
        try:
            body = msgspec.json.decode(await request.body(), type=DecisionLookup)
        except msgspec.ValidationError as exc:
            raise Invalid(f"not a decision lookup: {exc}", code="invalid_request") from exc
        async with pool.acquire() as conn:
            decided = await store.decided(conn, body.payment_ids[:1000])
        return Response(msgspec.json.encode(DecisionsFound(decided=sorted(decided))),
                        media_type="application/json")

    @router.get("/faults")
    async def get_faults(_: Caller = Depends(auth)) -> JSONResponse:
        async with pool.acquire() as conn:
            return JSONResponse({"decision_delay_ms": await store.decision_delay_ms(conn)})

    @router.put("/faults")
    async def put_faults(faults: Faults, caller: Caller = Depends(auth)) -> JSONResponse:
        async with pool.acquire() as conn:
            await store.set_decision_delay_ms(conn, faults.decision_delay_ms, datetime.now(UTC))
        log.warning("fault_set", decision_delay_ms=faults.decision_delay_ms, by=caller.client_id)
        return JSONResponse({"decision_delay_ms": faults.decision_delay_ms})

    app.include_router(router)
