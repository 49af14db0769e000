"""Wallet end users: password sign-in with lockout, and rotating refresh tokens.

Passwords are hashed with argon2id at OWASP's parameters (19 MiB, 2 passes, 1 lane); a
hash made with older parameters is replaced at the next successful sign-in. Ten failed
sign-ins in a row lock the user for 30 minutes; a locked user, an unknown user and a
wrong password all get the same answer, in about the same time.

A refresh token is an opaque random string of which only a SHA-256 is stored. Every use
rotates it within its family; presenting a token that was already used means someone
else has a copy, so the whole family is revoked (RFC 6819 §5.2.2.3, OAuth 2.1 §4.3.1).
Every function takes ``now`` so tests can move the clock. `CreateUser` is the
``POST /v1/users`` write.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.requests import Request
from starlette.responses import Response

from paystream.contracts.api import UserCreate
from paystream.contracts.ids import new_id
from paystream.gateway.idempotency import sealed
from paystream.platform.crypto import Keyring, Sealed, open_sealed, seal
from paystream.platform.http import JSONResponse, problem

if TYPE_CHECKING:
    from paystream.gateway.pipeline import Pipeline

HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1, hash_len=32, salt_len=16)
MAX_FAILURES = 10
LOCKOUT = timedelta(minutes=30)
REFRESH_TTL = timedelta(days=30)
# User tokens carry at most these scopes (and never more than their client has).
USER_SCOPES = frozenset({"accounts:read", "accounts:write", "payments:read", "payments:write"})
_DUMMY_HASH = HASHER.hash(secrets.token_urlsafe(16))


class UserExists(Exception):
    """A user with that email already exists in the tenant."""


@dataclass(frozen=True, slots=True)
class SignedIn:
    user_id: str
    tenant_id: str


@dataclass(frozen=True, slots=True)
class Refreshed:
    user_id: str
    tenant_id: str
    client_id: str
    scopes: frozenset[str]
    refresh_token: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _normal(email: str) -> str:
    return email.strip().lower()


class UserStore:
    """Users' email and name are sealed (``keyring``); the email is found by a blind index."""

    def __init__(self, keyring: Keyring, hasher: PasswordHasher = HASHER) -> None:
        self.keyring = keyring
        self.hasher = hasher

    def _index(self, tenant_id: str, email: str) -> bytes:
        return self.keyring.blind_index(f"email:{tenant_id}", _normal(email))

    async def create(
        self, conn: asyncpg.Connection, *, tenant_id: str, email: str, name: str, password: str
    ) -> dict[str, Any]:
        password_hash = await asyncio.to_thread(self.hasher.hash, password)  # ~20 ms of CPU
        user_id = new_id("usr")
        sealed = seal(self.keyring, orjson.dumps({"email": _normal(email), "name": name}).decode(),
                      f"user:{user_id}")
        try:
            created_at = await conn.fetchval(
                "INSERT INTO users (id, tenant_id, email_index, password_hash, kek_version, wrapped_dek, "
                "nonce, ciphertext) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING created_at",
                user_id, tenant_id, self._index(tenant_id, email), password_hash,
                sealed.kek_version, sealed.wrapped_dek, sealed.nonce, sealed.ciphertext,
            )
        except asyncpg.UniqueViolationError:
            raise UserExists(email) from None
        return {"id": user_id, "email": _normal(email), "name": name, "created_at": created_at}

    async def profile(self, conn: asyncpg.Connection, user_id: str) -> dict[str, str]:
        """The user's email and name, unsealed."""
        row = await conn.fetchrow(
            "SELECT kek_version, wrapped_dek, nonce, ciphertext FROM users WHERE id = $1", user_id
        )
        if row is None:
            raise KeyError(user_id)
        sealed = Sealed(row["kek_version"], bytes(row["wrapped_dek"]), bytes(row["nonce"]), bytes(row["ciphertext"]))
        data: dict[str, str] = orjson.loads(open_sealed(self.keyring, sealed, f"user:{user_id}"))
        return data

    async def sign_in(
        self, conn: asyncpg.Connection, *, tenant_id: str, email: str, password: str, now: datetime
    ) -> SignedIn | None:
        """The user when the password is right and the user not locked; None otherwise."""
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT id, password_hash, failed_logins, locked_until FROM users "
                "WHERE tenant_id = $1 AND email_index = $2 FOR UPDATE",
                tenant_id, self._index(tenant_id, email),
            )
            if row is None:
                await self._verify(_DUMMY_HASH, password)  # same work as for a real user
                return None
            locked = row["locked_until"] is not None and row["locked_until"] > now
            if locked:
                await self._verify(_DUMMY_HASH, password)
            if locked or not await self._verify(row["password_hash"], password):
                if not locked:
                    await self._failed(conn, row["id"], row["failed_logins"] + 1, now)
                return None
            new_hash = None
            if self.hasher.check_needs_rehash(row["password_hash"]):
                new_hash = await asyncio.to_thread(self.hasher.hash, password)
            await conn.execute(
                "UPDATE users SET failed_logins = 0, locked_until = NULL, "
                "password_hash = coalesce($2, password_hash) WHERE id = $1",
                row["id"], new_hash,
            )
        return SignedIn(row["id"], tenant_id)

    async def _verify(self, password_hash: str, password: str) -> bool:
        """argon2 verification off the event loop (it is CPU-bound by design)."""
        def check() -> bool:
            try:
                return self.hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)

    async def _failed(self, conn: asyncpg.Connection, user_id: str, failures: int, now: datetime) -> None:
        if failures >= MAX_FAILURES:
            await conn.execute(
                "UPDATE users SET failed_logins = 0, locked_until = $2 WHERE id = $1", user_id, now + LOCKOUT
            )
        else:
            await conn.execute("UPDATE users SET failed_logins = $2 WHERE id = $1", user_id, failures)

    # -- refresh tokens ------------------------------------------------------------------

    async def issue_refresh(
        self, conn: asyncpg.Connection, *, user_id: str, tenant_id: str, client_id: str,
        scopes: Sequence[str], now: datetime, family_id: str | None = None,
    ) -> str:
        token = "rt_" + secrets.token_urlsafe(32)
        await conn.execute(
            "INSERT INTO refresh_tokens (id, token_hash, family_id, user_id, client_id, tenant_id, scopes, "
            "expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            new_id("rtk"), _digest(token), family_id or new_id("fam"), user_id, client_id, tenant_id,
            sorted(scopes), now + REFRESH_TTL, now,
        )
        return token

    async def rotate_refresh(
        self, conn: asyncpg.Connection, *, token: str, client_id: str, now: datetime
    ) -> Refreshed | None:
        """A new refresh token for a valid one (which is spent); None when it is not valid,
        and a replayed token revokes its whole family first."""
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT id, family_id, user_id, client_id, tenant_id, scopes, expires_at, used_at, revoked_at "
                "FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
                _digest(token),
            )
            if row is None or row["revoked_at"] is not None:
                return None
            if row["used_at"] is not None:
                await conn.execute(
                    "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
                    row["family_id"], now,
                )
                return None
            if row["expires_at"] <= now or row["client_id"] != client_id:
                return None
            await conn.execute("UPDATE refresh_tokens SET used_at = $2 WHERE id = $1", row["id"], now)
            fresh = await self.issue_refresh(
                conn, user_id=row["user_id"], tenant_id=row["tenant_id"], client_id=client_id,
                scopes=row["scopes"], now=now, family_id=row["family_id"],
            )
        return Refreshed(row["user_id"], row["tenant_id"], client_id, frozenset(row["scopes"]), fresh)


class CreateUser:
    """``POST /v1/users`` (users:write, no user tokens): a wallet user of the caller's tenant."""

    def __init__(self, *, pipeline: Pipeline, pool: asyncpg.Pool, users: UserStore | None) -> None:
        self.pipeline = pipeline
        self.pool = pool
        self.users = users  # None without the vault's keyring

    async def __call__(self, request: Request) -> Response:
        checked = await self.pipeline.local_write(request, "users:write", UserCreate, users_may=False)
        if isinstance(checked, Response):
            return checked
        principal, spec = checked
        users = self.users
        if users is None:
            return problem(503, "vault_unavailable", "Service unavailable", "users need the vault's keyring")

        async def create() -> Response:
            try:
                async with self.pool.acquire() as conn:
                    row = await users.create(conn, tenant_id=principal.tenant_id, email=spec.email,
                                             name=spec.name, password=spec.password)
            except UserExists:
                return problem(409, "user_exists", "Conflict", "a user with this email already exists")
            request.state.object_id = row["id"]
            return JSONResponse(row, status_code=201)

        # The password only as a keyed blind index (the key store of the vault), never in clear.
        same = {"email": spec.email, "name": spec.name,
                "password": users.keyring.blind_index(f"idempotency-password:{principal.tenant_id}",
                                                      spec.password).hex()}
        return await self.pipeline.once(request, principal, same, create,
                                        keep=sealed(users.keyring, principal, request))
