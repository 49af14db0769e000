"""Access-token signing keys, all in one place: made, stored, loaded into the token
service, and rotated (`paystream keys rotate signing`) without downtime.

A rotation writes the new key to the gateway's schema; every running gateway picks it up
at its next key refresh (``signing_keys_refresh_seconds``) and signs with it from then on.
The keys in use until now keep verifying until every token they could have signed has
expired (token lifetime + leeway), then retire. Tokens in flight never fail.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from paystream.gateway.audit import AuditRecord
from paystream.gateway.audit import append as append_audit
from paystream.gateway.store import gateway_pool
from paystream.platform.config import load_settings
from paystream.platform.observability import get_logger

if TYPE_CHECKING:
    from paystream.gateway.identity.tokens import TokenService

log = get_logger(__name__)

ALGORITHM = "EdDSA"
LEEWAY_SECONDS = 30
_KEYS_LOCK = 0x6B657973  # "keys"


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey | None
    public: Ed25519PublicKey
    created_at: float


def new_signing_key() -> tuple[str, str, dict[str, Any]]:
    """A fresh Ed25519 key: (kid, private PEM, public JWK)."""
    private = Ed25519PrivateKey.generate()
    kid = "k_" + secrets.token_hex(8)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return kid, pem, public_jwk(kid, private.public_key())


def public_jwk(kid: str, public: Ed25519PublicKey) -> dict[str, Any]:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": jwt.utils.base64url_encode(raw).decode(),
        "kid": kid,
        "alg": ALGORITHM,
        "use": "sig",
    }


def load_key(kid: str, private_pem: str, created_at: float) -> SigningKey:
    private = serialization.load_pem_private_key(private_pem.encode(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"key {kid} is not an Ed25519 key")
    return SigningKey(kid=kid, private=private, public=private.public_key(), created_at=created_at)


class KeyStore:
    """The ``signing_keys`` table."""

    async def active_keys(self, conn: asyncpg.Connection) -> list[asyncpg.Record]:
        """Keys that verify now: never retired, or retiring later (the newest signs)."""
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT kid, algorithm, private_pem, public_jwk, created_at, retired_at FROM signing_keys "
            "WHERE retired_at IS NULL OR retired_at > now() ORDER BY created_at"
        )
        return rows

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


async def load_signing_keys(pool: asyncpg.Pool, tokens: TokenService, *, create: bool) -> None:
    """Load the active signing keys; make the first one if there is none and ``create``."""
    store = KeyStore()
    async with pool.acquire() as conn, conn.transaction():
        rows = await store.active_keys(conn)
        if not rows and create:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _KEYS_LOCK)
            rows = await store.active_keys(conn)
            if not rows:
                kid, pem, jwk = new_signing_key()
                await store.add_key(conn, kid=kid, algorithm=ALGORITHM, private_pem=pem, public_jwk=jwk)
                log.info("signing_key_created", kid=kid)
                rows = await store.active_keys(conn)
    tokens.set_keys([load_key(r["kid"], r["private_pem"], r["created_at"].timestamp()) for r in rows])


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
