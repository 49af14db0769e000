"""`paystream keys rotate`: a new access-token signing key, without downtime.

The new key is written to the gateway's schema; every running gateway picks it up at its
next key refresh (``signing_keys_refresh_seconds``) and signs with it from then on. The
keys in use until now keep verifying until every token they could have signed has
expired (token lifetime + leeway), then retire. Tokens in flight never fail.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import asyncpg

from paystream.gateway.audit import AuditRecord
from paystream.gateway.audit import append as append_audit
from paystream.gateway.store import ClientStore, KeyStore
from paystream.gateway.tokens import ALGORITHM, LEEWAY_SECONDS, new_signing_key
from paystream.gateway.vault import CardVault
from paystream.platform.config import load_settings
from paystream.platform.crypto import FileKeyring
from paystream.platform.db import create_pool
from paystream.platform.home import database_url

SCHEMA = "gateway"


async def gateway_pool(home: Path, url: str | None = None) -> asyncpg.Pool:
    """A one-connection pool on the gateway's schema: of the stack running from ``home``, or of
    the database at ``url`` (a deployment's: the gateway's own role is enough)."""
    return await create_pool(url or database_url(home), min_size=1, max_size=1, search_path=SCHEMA)


async def rotate_signing_key(home: Path) -> tuple[str, datetime]:
    """Rotate on the stack of ``home``; returns the new kid and when the old keys retire."""
    settings = load_settings()
    kid, pem, jwk = new_signing_key()
    pool = await gateway_pool(home)
    try:
        async with pool.acquire() as conn:
            retire_at = await KeyStore().rotate(
                conn, kid=kid, algorithm=ALGORITHM, private_pem=pem, public_jwk=jwk,
                verify_for_seconds=settings.token_ttl_seconds + LEEWAY_SECONDS,
            )
            await append_audit(conn, AuditRecord(actor="cli", source="local", action="keys rotate signing",
                                                 outcome=200, object_id=kid))
    finally:
        await pool.close()
    return kid, retire_at


async def rotate_encryption_key(home: Path) -> tuple[str, int]:
    """Add a KEK version to the keyring of ``home`` and re-wrap every data key under it.

    Running gateways pick the new version up at their next refresh; the re-wrap runs twice,
    the second time after that refresh, so a card sealed meanwhile under the old version is
    re-wrapped too. The old version stays in the keyring (nothing needs it any more; a
    later rotation may drop versions no row refers to). Returns (version, rows re-wrapped).
    """
    path = home / "keyring.json"
    if not path.exists():
        raise FileNotFoundError(f"no keyring at {path}")
    version = FileKeyring.add_version(path)
    settings = load_settings()
    vault = CardVault(FileKeyring.load(path))
    pool = await gateway_pool(home)
    try:
        async with pool.acquire() as conn:
            rewrapped = await vault.rewrap_all(conn)
            await asyncio.sleep(settings.signing_keys_refresh_seconds + 1)
            rewrapped += await vault.rewrap_all(conn)
            await append_audit(conn, AuditRecord(actor="cli", source="local", action="keys rotate encryption",
                                                 outcome=200, object_id=version))
    finally:
        await pool.close()
    return version, rewrapped


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
