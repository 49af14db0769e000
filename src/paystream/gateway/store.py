"""The gateway schema's SQL that no sub-package owns: idempotency keys, and the pool the
command line opens on the schema. (Clients and signing keys: `identity/`; cards: `vault/`.)"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import asyncpg

from paystream.gateway import audit
from paystream.gateway.audit import AuditRecord
from paystream.gateway.domain import StoredKey
from paystream.platform.db import create_pool
from paystream.platform.home import database_url

SCHEMA = "gateway"

LEASE = timedelta(seconds=60)

# A data-modifying WITH runs whether or not the INSERT reads it: both in one statement.
_FINISH_ONLY = ("UPDATE idempotency_keys SET state = 'done', status_code = $3, response_body = $4, "
                "response_type = $5 WHERE client_id = $1 AND key = $2")
_FINISH = f"WITH done AS ({_FINISH_ONLY}) {audit.insert_statement(first=6)}"


async def gateway_pool(home: Path, url: str | None = None) -> asyncpg.Pool:
    """A one-connection pool on the gateway's schema: of the stack running from ``home``, or of
    the database at ``url`` (a deployment's: the gateway's own role is enough)."""
    return await create_pool(url or database_url(home), min_size=1, max_size=1, search_path=SCHEMA)


class IdempotencyStore:
    """The ``idempotency_keys`` table: one row per (client, key), leased while it runs."""

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
        self, conn: asyncpg.Connection, client_id: str, key: str, status: int, body: bytes, media_type: str,
        record: AuditRecord | None = None,
    ) -> None:
        """Store the answer and append the request's audit ``record``: one statement, so one round
        trip and one commit (a transaction around two statements would be four round trips)."""
        if record is None:
            await conn.execute(_FINISH_ONLY, client_id, key, status, body, media_type)
            return
        await conn.execute(_FINISH, client_id, key, status, body, media_type, *audit.insert_values(record))

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
