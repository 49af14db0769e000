"""API clients: their table, the `POST /v1/clients` write, and `paystream clients create`.

A client's secret is shown once, when it is made, and stored only as a hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from paystream.contracts.api import ClientCreate
from paystream.contracts.ids import new_id
from paystream.gateway.audit import AuditRecord
from paystream.gateway.audit import append as append_audit
from paystream.gateway.idempotency import SHOWN_AS_STORED
from paystream.gateway.store import gateway_pool
from paystream.platform.http import JSONResponse
from paystream.platform.observability import get_logger

if TYPE_CHECKING:
    from paystream.gateway.pipeline import Pipeline

log = get_logger(__name__)


def hash_secret(secret: str) -> str:
    """Client secrets are 256-bit random strings, so one SHA-256 is enough to store them."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


class ClientStore:
    """The ``clients`` table."""

    async def create_client(
        self, conn: asyncpg.Connection, *, tenant_id: str, name: str, scopes: Sequence[str]
    ) -> tuple[asyncpg.Record, str]:
        """A new API client; returns (row, secret). The secret is never stored in clear."""
        secret = "pss_" + secrets.token_urlsafe(32)
        row = await conn.fetchrow(
            "INSERT INTO clients (id, tenant_id, name, secret_hash, scopes) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id, tenant_id, name, scopes, created_at",
            new_id("cli"), tenant_id, name, hash_secret(secret), sorted(set(scopes)),
        )
        assert row is not None
        return row, secret

    async def get_client(self, conn: asyncpg.Connection, client_id: str) -> asyncpg.Record | None:
        return await conn.fetchrow(
            "SELECT id, tenant_id, name, secret_hash, scopes, disabled FROM clients WHERE id = $1",
            client_id,
        )


class CreateClient:
    """``POST /v1/clients`` (admin scope, no user tokens): a new API client and its secret."""

    def __init__(self, *, pipeline: Pipeline, pool: asyncpg.Pool, clients: ClientStore) -> None:
        self.pipeline = pipeline
        self.pool = pool
        self.clients = clients

    async def __call__(self, request: Request) -> Response:
        checked = await self.pipeline.local_write(request, "admin", ClientCreate, users_may=False)
        if isinstance(checked, Response):
            return checked
        principal, spec = checked

        async def create() -> Response:
            async with self.pool.acquire() as conn:
                row, secret = await self.clients.create_client(
                    conn, tenant_id=spec.tenant, name=spec.name, scopes=spec.scopes
                )
            request.state.object_id = row["id"]
            log.info("client_created", new_client_id=row["id"], tenant=spec.tenant, by=principal.client_id)
            return JSONResponse(
                {"client_id": row["id"], "client_secret": secret, "name": row["name"],
                 "tenant": row["tenant_id"], "scopes": list(row["scopes"]), "created_at": row["created_at"]},
                status_code=201,
            )

        return await self.pipeline.once(request, principal, spec.model_dump(mode="json"), create,
                                        keep=SHOWN_AS_STORED)


async def create_client(
    home: Path, *, name: str, tenant: str, scopes: list[str], url: str | None = None,
) -> dict[str, object]:
    """`paystream clients create`: an API client made from the command line (and audited)."""
    pool = await gateway_pool(home, url)
    try:
        async with pool.acquire() as conn, conn.transaction():
            row, secret = await ClientStore().create_client(conn, tenant_id=tenant, name=name, scopes=scopes)
            await append_audit(conn, AuditRecord(actor="cli", source="local", action="POST /v1/clients",
                                                 outcome=201, tenant_id=tenant, object_id=row["id"]))
    finally:
        await pool.close()
    return {"client_id": row["id"], "client_secret": secret, "name": row["name"], "tenant": row["tenant_id"],
            "scopes": list(row["scopes"])}
