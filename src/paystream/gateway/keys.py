"""`paystream keys rotate`: a new access-token signing key, without downtime.

The new key is written to the gateway's schema; every running gateway picks it up at its
next key refresh (``signing_keys_refresh_seconds``) and signs with it from then on. The
keys in use until now keep verifying until every token they could have signed has
expired (token lifetime + leeway), then retire. Tokens in flight never fail.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import asyncpg

from paystream.gateway.store import KeyStore
from paystream.gateway.tokens import ALGORITHM, LEEWAY_SECONDS, new_signing_key
from paystream.platform.config import load_settings
from paystream.platform.db import create_pool

SCHEMA = "gateway"


async def gateway_pool(home: Path) -> asyncpg.Pool:
    """A one-connection pool on the gateway's schema of the stack running from ``home``."""
    stack_file = home / "stack.json"
    if not stack_file.exists():
        raise FileNotFoundError(f"no running stack at {home} (no stack.json)")
    url = json.loads(stack_file.read_text())["postgres_url"]
    return await create_pool(url, min_size=1, max_size=1, search_path=SCHEMA)


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
    finally:
        await pool.close()
    return kid, retire_at
