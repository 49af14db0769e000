"""Internal HTTP routes of notifications (the gateway forwards ``/v1/webhook_endpoints``)."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Query, Response

from paystream.contracts.api import WebhookEndpoint, WebhookEndpointCreate
from paystream.contracts.ids import has_prefix
from paystream.notifications.handlers import NotificationHandlers
from paystream.notifications.store import NotificationsStore
from paystream.platform.errors import Invalid, NotFound
from paystream.platform.http import Caller, InternalAuth, JSONResponse


def install_routes(
    app: FastAPI, *, pool: asyncpg.Pool, store: NotificationsStore, handlers: NotificationHandlers,
    auth: InternalAuth,
) -> None:
    router = APIRouter(prefix="/internal")

    @router.post("/webhook_endpoints", status_code=201)
    async def create_endpoint(body: WebhookEndpointCreate, caller: Caller = Depends(auth)) -> JSONResponse:
        async with pool.acquire() as conn:
            endpoint = await handlers.create_endpoint(conn, caller, body)
        return JSONResponse(endpoint, status_code=201)

    @router.get("/webhook_endpoints")
    async def list_endpoints(
        caller: Caller = Depends(auth),
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        starting_after: Annotated[str | None, Query(max_length=64)] = None,
    ) -> JSONResponse:
        if starting_after is not None and not has_prefix(starting_after, "whe"):
            raise Invalid("starting_after must be a webhook endpoint id", code="invalid_cursor")
        async with pool.acquire() as conn:
            rows = await store.list_endpoints(
                conn, caller.tenant_id, before_id=starting_after, limit=limit
            )
        return JSONResponse(
            {"data": [WebhookEndpoint.body(r) for r in rows[:limit]], "has_more": len(rows) > limit}
        )

    @router.get("/webhook_endpoints/{endpoint_id}")
    async def get_endpoint(endpoint_id: str, caller: Caller = Depends(auth)) -> JSONResponse:
        async with pool.acquire() as conn:
            row = await store.get_endpoint(conn, caller.tenant_id, endpoint_id)
        if row is None:
            raise NotFound(f"no webhook endpoint {endpoint_id}", code="webhook_endpoint_not_found")
        return JSONResponse(WebhookEndpoint.body(row))

    @router.delete("/webhook_endpoints/{endpoint_id}", status_code=204)
    async def delete_endpoint(endpoint_id: str, caller: Caller = Depends(auth)) -> Response:
        async with pool.acquire() as conn:
            removed = await store.disable_endpoint(conn, caller.tenant_id, endpoint_id)
        if not removed:
            raise NotFound(f"no webhook endpoint {endpoint_id}", code="webhook_endpoint_not_found")
        return Response(status_code=204)

    app.include_router(router)
