"""The worker that sends webhook deliveries.

It leases due deliveries, POSTs them concurrently with a timeout, and schedules retries
with exponential backoff and jitter; after the last attempt a delivery is ``dead`` (the
dead-letter state, kept for inspection and manual replay).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter

from paystream.notifications import ssrf
from paystream.notifications.domain import SIGNATURE_HEADER, delivered, retry_delay, sign
from paystream.notifications.store import NotificationsStore
from paystream.platform import tracing
from paystream.platform.config import Settings
from paystream.platform.db import Listener
from paystream.platform.observability import Metrics, get_logger

log = get_logger(__name__)

LEASE_SECONDS = 60.0


def _payment_id(body: bytes) -> str | None:
    """The payment a webhook body is about (its ``data.id``), for the send's span."""
    try:
        data = orjson.loads(body).get("data")
    except orjson.JSONDecodeError:
        return None
    return data.get("id") if isinstance(data, dict) else None


class DeliveryWorker:
    """Sends due webhook deliveries until told to stop."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: NotificationsStore,
        settings: Settings,
        metrics: Metrics,
        *,
        channel: str = "notifications_deliveries",
    ) -> None:
        self._pool = pool
        self._store = store
        self._settings = settings
        self._channel = channel
        self._wakeup = asyncio.Event()
        self._client: aiohttp.ClientSession | None = None  # made in the running loop
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)
        self.sent = Counter(
            "paystream_webhook_attempts_total", "Webhook delivery attempts by result", ["result"],
            registry=metrics.registry,
        )

    def _session(self) -> aiohttp.ClientSession:
        """One keep-alive session for every endpoint; a redirect is not followed (it fails)."""
        if self._client is None:
            self._client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._settings.webhook_timeout_seconds),
                connector=ssrf.connector(
                    allow_private=self._settings.webhook_allow_private,
                    limit=self._settings.webhook_concurrency * 2,
                ),
                headers={"user-agent": "paystream-webhooks/0.1"},
            )
        return self._client

    async def _attempt(self, row: asyncpg.Record) -> dict[str, Any]:
        attempts = row["attempts"] + 1
        status_code: int | None = None
        error: str | None = None
        forbidden = ssrf.url_problem(row["url"], allow_private=self._settings.webhook_allow_private)
        if not row["enabled"]:
            error = "endpoint disabled"
        elif forbidden is not None:
            error = forbidden  # e.g. registered while local receivers were allowed
        else:
            body = bytes(row["body"])
            headers = {
                "content-type": "application/json",
                SIGNATURE_HEADER: sign(row["secret"], int(time.time()), body),
                "paystream-event-id": row["event_id"],
            }
            async with self._slots:
                if tracing.enabled():
                    status_code, error = await self._traced_post(row, body, headers, attempts)
                else:
                    status_code, error = await self._post(row["url"], body, headers)
        now = datetime.now(UTC)
        if status_code is not None and delivered(status_code):
            self.sent.labels("delivered").inc()
            return {"id": row["id"], "status": "delivered", "attempts": attempts, "next_at": now,
                    "last_status": status_code, "last_error": None}
        if attempts >= self._settings.webhook_max_attempts or not row["enabled"]:
            log.warning("webhook_dead", event_id=row["event_id"], status=status_code, error=error)
            self.sent.labels("dead").inc()
            return {"id": row["id"], "status": "dead", "attempts": attempts, "next_at": now,
                    "last_status": status_code, "last_error": error}
        delay = retry_delay(
            attempts,
            base=self._settings.webhook_backoff_base_seconds,
            cap=self._settings.webhook_backoff_cap_seconds,
        )
        self.sent.labels("retry").inc()
        return {"id": row["id"], "status": "pending", "attempts": attempts,
                "next_at": now + timedelta(seconds=delay), "last_status": status_code,
                "last_error": error}

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        """One POST: the receiver's status, or the error that stopped it."""
        try:
            async with self._session().post(url, data=body, headers=headers, allow_redirects=False) as response:
                await response.read()
                return response.status, None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return None, repr(exc)[:500]

    async def _traced_post(
        self, row: asyncpg.Record, body: bytes, headers: dict[str, str], attempt: int
    ) -> tuple[int | None, str | None]:
        """`_post` in a CLIENT span continuing the delivery's trace. The receiver is not sent our
        traceparent: it is outside paystream, and trace ids are ours."""
        attributes = {
            "http.request.method": "POST", "url.full": row["url"], "paystream.event_id": row["event_id"],
            "paystream.event_type": row["event_type"], "paystream.endpoint_id": row["endpoint_id"],
            "paystream.webhook.attempt": attempt,
        }
        payment_id = _payment_id(body)
        if payment_id:
            attributes[tracing.PAYMENT_ID] = payment_id
        with tracing.continued(row["traceparent"], "webhook send", kind=SpanKind.CLIENT,
                               attributes=attributes) as span:
            status_code, error = await self._post(row["url"], body, headers)
            if status_code is not None:
                span.set_attribute("http.response.status_code", status_code)
            if status_code is None or not delivered(status_code):
                span.set_status(Status(StatusCode.ERROR, error or f"answered {status_code}"))
            return status_code, error

    async def deliver_once(self, limit: int = 200) -> int:
        """Lease and attempt one batch of due deliveries; returns how many were attempted."""
        async with self._pool.acquire() as conn:
            rows = await self._store.claim_due(conn, limit=limit, lease_seconds=LEASE_SECONDS)
        if not rows:
            return 0
        results = await asyncio.gather(*(self._attempt(row) for row in rows))
        async with self._pool.acquire() as conn:
            await self._store.record_results(conn, results, datetime.now(UTC))
        return len(rows)

    def _notified(self, *_: object) -> None:
        self._wakeup.set()

    async def run(self, stopping: asyncio.Event) -> None:
        listener = Listener(self._pool, self._channel, self._notified, name="deliveries")
        try:
            while not stopping.is_set():
                await listener.ensure()  # never raises: without it, the poll delivers
                self._wakeup.clear()
                try:
                    attempted = await self.deliver_once()
                except Exception as exc:
                    log.warning("delivery_round_failed", error=repr(exc))
                    attempted = 0
                    await asyncio.sleep(1.0)
                if attempted:
                    continue
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=0.5)
                except TimeoutError:
                    pass
        finally:
            await listener.close()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

