"""The gateway schema's SQL: API clients, signing keys, idempotency keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from paystream.contracts.ids import new_id
from paystream.gateway.domain import StoredKey

LEASE = timedelta(seconds=60)


def hash_secret(secret: str) -> str:
    """Client secrets are 256-bit random strings, so one SHA-256 is enough to store them."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


class ClientStore:
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


class KeyStore:
    async def active_keys(self, conn: asyncpg.Connection) -> list[asyncpg.Record]:
        """Keys that verify now: never retired, or retiring later (the newest signs)."""
        return await conn.fetch(
            "SELECT kid, algorithm, private_pem, public_jwk, created_at, retired_at FROM signing_keys "
            "WHERE retired_at IS NULL OR retired_at > now() ORDER BY created_at"
        )

    async def rotate(
        self, conn: asyncpg.Connection, *, kid: str, algorithm: str, private_pem: str,
        public_jwk: dict[str, Any], verify_for_seconds: float,
    ) -> datetime:
        """Add a signing key; every key in use until now retires once the tokens it signed
        have expired (``verify_for_seconds`` from now). Returns that instant."""
        async with conn.transaction():
            retire_at: datetime = await conn.fetchval(
                "SELECT now() + make_interval(secs => $1)", verify_for_seconds
            )
            await conn.execute(
                "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL OR retired_at > $1",
                retire_at,
            )
            await self.add_key(conn, kid=kid, algorithm=algorithm, private_pem=private_pem,
                               public_jwk=public_jwk)
        return retire_at

    async def add_key(
        self, conn: asyncpg.Connection, *, kid: str, algorithm: str, private_pem: str, public_jwk: dict[str, Any]
    ) -> None:
        await conn.execute(
            "INSERT INTO signing_keys (kid, algorithm, private_pem, public_jwk) VALUES ($1, $2, $3, $4)",
            kid, algorithm, private_pem, public_jwk,
        )


class IdempotencyStore:
    async def begin(
        self, conn: asyncpg.Connection, client_id: str, key: str, fingerprint: str, now: datetime
    ) -> StoredKey | None:
        """Claim the key; None when this request is the first, else what is stored."""
        inserted = await conn.fetchval(
            "INSERT INTO idempotency_keys (client_id, key, fingerprint, state, locked_until, created_at) "
            "VALUES ($1, $2, $3, 'running', $4, $5) ON CONFLICT (client_id, key) DO NOTHING RETURNING 1",
            client_id, key, fingerprint, now + LEASE, now,
        )
        if inserted:
            return None
        row = await conn.fetchrow(
            "SELECT fingerprint, state, locked_until, status_code, response_body, response_type "
            "FROM idempotency_keys WHERE client_id = $1 AND key = $2",
            client_id, key,
        )
        if row is None:  # removed in between (an abandoned attempt): try again
            return await self.begin(conn, client_id, key, fingerprint, now)
        return StoredKey(
            fingerprint=row["fingerprint"],
            state=row["state"],
            locked_until=row["locked_until"],
            status_code=row["status_code"],
            response_body=bytes(row["response_body"]) if row["response_body"] is not None else None,
            response_type=row["response_type"],
        )

    async def take_over(self, conn: asyncpg.Connection, client_id: str, key: str, now: datetime) -> bool:
        """Re-claim a key whose lease ran out; False if another request got there first."""
        taken = await conn.fetchval(
            "UPDATE idempotency_keys SET locked_until = $3 WHERE client_id = $1 AND key = $2 "
            "AND state = 'running' AND locked_until <= $4 RETURNING 1",
            client_id, key, now + LEASE, now,
        )
        return bool(taken)

    async def finish(
        self, conn: asyncpg.Connection, client_id: str, key: str, status: int, body: bytes, media_type: str
    ) -> None:
        await conn.execute(
            "UPDATE idempotency_keys SET state = 'done', status_code = $3, response_body = $4, "
            "response_type = $5 WHERE client_id = $1 AND key = $2",
            client_id, key, status, body, media_type,
        )

    async def abandon(self, conn: asyncpg.Connection, client_id: str, key: str) -> None:
        """Forget a key whose request could not be completed, so a retry runs it again."""
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE client_id = $1 AND key = $2 AND state = 'running'",
            client_id, key,
        )

    async def purge(self, conn: asyncpg.Connection, older_than: datetime) -> int:
        result = await conn.execute(
            "DELETE FROM idempotency_keys WHERE created_at < $1 AND state = 'done'", older_than
        )
        return int(str(result).split()[-1])
