"""Notifications' commands and events: create a webhook endpoint; queue public payment
events as signed deliveries to the endpoints that want them.

Enqueueing happens in the consumer's transaction (with the inbox), so an event is
queued once per endpoint however often it is delivered; `notifications.workers` sends them.
"""

from __future__ import annotations

import asyncpg
import orjson

from paystream.contracts.api import WebhookEndpoint, WebhookEndpointCreate
from paystream.contracts.bodies import Body
from paystream.contracts.envelope import Envelope
from paystream.contracts.events import WEBHOOK_EVENT_TYPES
from paystream.contracts.ids import new_id
from paystream.notifications.domain import new_secret, wants
from paystream.notifications.ssrf import url_problem
from paystream.notifications.store import NotificationsStore
from paystream.platform import tracing
from paystream.platform.errors import Invalid
from paystream.platform.http import Caller
from paystream.platform.observability import get_logger, log_on_commit

log = get_logger(__name__)



def webhook_body(envelope: Envelope) -> bytes:
    """The JSON a receiver gets: ``{"id", "type", "created_at", "data"}``."""
    return orjson.dumps(
        {
            "id": envelope.id,
            "type": envelope.type,
            "created_at": envelope.occurred_at,
            "data": envelope.payload["data"],
        }
    )


class NotificationHandlers:
    """Notifications' command (`create_endpoint`) and event handler (`on_payment_events`)."""

    def __init__(self, store: NotificationsStore, *, allow_private: bool = False) -> None:
        self._store = store
        self._allow_private = allow_private

    async def create_endpoint(
        self, conn: asyncpg.Connection, caller: Caller, body: WebhookEndpointCreate
    ) -> Body:
        """A new endpoint, with its signing secret; 422 for a URL webhooks may not reach.

        The secret is shown once: a retried creation (same idempotency key) does not show it.
        """
        problem = url_problem(body.url, allow_private=self._allow_private)
        if problem is not None:
            raise Invalid(problem, code="webhook_url_forbidden")
        secret = new_secret()
        row, created = await self._store.create_endpoint(
            conn,
            {
                "id": new_id("whe"),
                "tenant_id": caller.tenant_id,
                "url": body.url,
                "events": sorted(set(body.events)),
                "secret": secret,
                "description": body.description,
                "create_key": caller.idempotency_key,
            },
        )
        return WebhookEndpoint.body(row, secret=secret if created else None)

    async def on_payment_events(self, conn: asyncpg.Connection, envelopes: list[Envelope]) -> None:
        public = [e for e in envelopes if e.type in WEBHOOK_EVENT_TYPES]
        if not public:
            return
        endpoints = await self._store.subscribers(conn, [e.payload["tenant_id"] for e in public])
        rows = []
        for envelope in public:
            tenant = envelope.payload["tenant_id"]
            body = None
            queued = 0
            # The event span's trace (None when tracing is off): the send continues it.
            traceparent = tracing.traceparent_for(envelope.id)
            for endpoint in endpoints:
                if endpoint["tenant_id"] == tenant and wants(endpoint["events"], envelope.type):
                    body = body or webhook_body(envelope)
                    rows.append((envelope.id, endpoint["id"], tenant, envelope.type, body, traceparent))
                    queued += 1
            log_on_commit(
                log, "webhooks_queued", event_id=envelope.id, event_type=envelope.type,
                payment_id=envelope.payload["data"].get("id"),
                correlation_id=envelope.correlation_id, endpoints=queued,
            )
        await self._store.enqueue(conn, rows)


