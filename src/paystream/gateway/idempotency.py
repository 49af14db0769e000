"""Step 3 of the request path: an Idempotency-Key honoured.

For a key seen before, `Idempotency.run` answers without running the request again: the
stored answer (``Idempotent-Replayed: true``) for the same request, 422 for another
request under the same key, 409 while the first is still running (or a lease it cannot
take over). Otherwise it runs the request once and stores the answer together with the
audit record, in one transaction. An answer of 5xx, or a request that raises, abandons the
key so that a retry runs it again. `Keep` says how an answer that holds what must not lie
in clear is stored and read back (`sealed`, `without_secret`).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response

from paystream.gateway.audit import audit_record
from paystream.gateway.domain import Principal, idempotency_verdict, valid_idempotency_key
from paystream.gateway.store import IdempotencyStore
from paystream.platform.crypto import Keyring, Sealed, open_sealed, seal
from paystream.platform.http import problem
from paystream.platform.observability import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Keep:
    """How an answer is stored under its Idempotency-Key, and read back for a replay."""

    stored: Callable[[bytes], bytes]
    replayed: Callable[[bytes], bytes]


def key_refused(key: str | None, *, required: bool) -> Response | None:
    """The 400 for a missing (when ``required``) or malformed Idempotency-Key; else None."""
    if key is None and required:
        return problem(400, "idempotency_key_required", "Idempotency-Key required",
                       "send an Idempotency-Key header (1-255 characters) with this request")
    if key is not None and not valid_idempotency_key(key):
        return problem(400, "invalid_idempotency_key", "Invalid Idempotency-Key",
                       "the Idempotency-Key must be 1-255 printable ASCII characters")
    return None


class Idempotency:
    """The step; see the module docstring."""

    def __init__(self, pool: asyncpg.Pool, store: IdempotencyStore | None = None) -> None:
        self.pool = pool
        self.store = store or IdempotencyStore()

    async def run(
        self, request: Request, principal: Principal, key: str, request_fp: str, action: str,
        produce: Callable[[], Awaitable[Response]], correlation_id: str, *, keep: Keep | None = None,
    ) -> Response:
        """Answer a request with an Idempotency-Key: the first answer again for the same key and
        request, 422 for another request, 409 while the first runs; else ``produce`` it. ``keep``
        says how the answer is stored and read back, when it holds what must not lie in clear."""
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn:
            stored = await self.store.begin(conn, principal.client_id, key, request_fp, now)
            if stored is not None:
                verdict = idempotency_verdict(stored, request_fp, now)
                if verdict == "replay":
                    assert stored.status_code is not None and stored.response_body is not None
                    body = stored.response_body
                    if keep is not None and stored.status_code < 300:
                        body = keep.replayed(body)
                    return Response(
                        body, status_code=stored.status_code,
                        media_type=stored.response_type,
                        headers={"Idempotent-Replayed": "true", "x-correlation-id": correlation_id},
                    )
                if verdict == "mismatch":
                    return problem(422, "idempotency_key_reused", "Idempotency-Key reused",
                                   "this Idempotency-Key was used with a different request")
                if verdict == "in_progress" or not await self.store.take_over(
                    conn, principal.client_id, key, now
                ):
                    return problem(409, "idempotency_key_in_use", "Request in progress",
                                   "a request with this Idempotency-Key is still being processed")
        try:
            response = await produce()
        except BaseException:
            await self.abandon(principal.client_id, key)
            raise
        if response.status_code >= 500:
            await self.abandon(principal.client_id, key)
            return response
        # The stored answer and the audit record in one statement: one commit, one round trip.
        record = audit_record(action, request, response.status_code, response)
        body = bytes(response.body)
        async with self.pool.acquire() as conn:
            await self.store.finish(
                conn, principal.client_id, key, response.status_code,
                keep.stored(body) if keep is not None and response.status_code < 300 else body,
                response.media_type or "application/json", record,
            )
        request.state.audited = True
        return response

    async def abandon(self, client_id: str, key: str) -> None:
        """Forget the key of a request that did not complete, so that a retry runs it."""
        try:
            async with self.pool.acquire() as conn:
                await self.store.abandon(conn, client_id, key)
        except Exception as exc:  # the lease will expire and let a retry take over
            log.warning("idempotency_abandon_failed", error=repr(exc))


def sealed(keyring: Keyring, principal: Principal, request: Request) -> Keep:
    """A created user's answer (email, name: personal data) kept sealed like the user row."""
    context = f"idempotency:{principal.client_id}:{request.headers.get('idempotency-key')}"

    def stored(body: bytes) -> bytes:
        box = seal(keyring, body.decode(), context)
        return orjson.dumps({"sealed": [box.kek_version, *(base64.b64encode(b).decode()
                                                            for b in (box.wrapped_dek, box.nonce, box.ciphertext))]})

    def replayed(body: bytes) -> bytes:
        version, *parts = orjson.loads(body)["sealed"]
        wrapped, nonce, ciphertext = (base64.b64decode(part) for part in parts)
        return open_sealed(keyring, Sealed(version, wrapped, nonce, ciphertext), context).encode()

    return Keep(stored=stored, replayed=replayed)


def without_secret(body: bytes) -> bytes:
    """A created client as its Idempotency-Key keeps it: the secret is shown once, never stored
    in clear, so a replay answers ``client_secret: null`` (the client exists once either way)."""
    created = orjson.loads(body)
    created["client_secret"] = None
    return orjson.dumps(created)


SHOWN_AS_STORED = Keep(stored=without_secret, replayed=lambda body: body)
"""`Keep` for a created client: stored without its secret, replayed as stored."""
