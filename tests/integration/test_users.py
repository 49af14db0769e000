"""Wallet users on real PostgreSQL: argon2id, rehash on sign-in, lockout, refresh rotation."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from argon2 import PasswordHasher

from paystream.gateway.identity.users import LOCKOUT, MAX_FAILURES, UserExists
from paystream.gateway.identity.users import UserStore as _UserStore
from paystream.platform.crypto import FileKeyring

KEYRING = FileKeyring({"active": "v1", "keks": {"v1": base64.b64encode(secrets.token_bytes(32)).decode()},
                       "index_key": base64.b64encode(secrets.token_bytes(32)).decode()})


def UserStore(hasher: PasswordHasher | None = None) -> _UserStore:
    return _UserStore(KEYRING, hasher) if hasher is not None else _UserStore(KEYRING)

PASSWORD = "correct horse battery staple"
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
async def gateway(make_schema: Any) -> Any:
    return await make_schema("gateway")


async def _user(gateway: Any, store: UserStore | None = None, email: str = "Ada@Example.com") -> str:
    async with gateway.pool.acquire() as conn:
        row = await (store or UserStore()).create(conn, tenant_id="t1", email=email, name="Ada Lovelace",
                                                  password=PASSWORD)
    return str(row["id"])


async def _sign_in(gateway: Any, password: str, now: datetime, store: UserStore | None = None) -> Any:
    async with gateway.pool.acquire() as conn:
        return await (store or UserStore()).sign_in(conn, tenant_id="t1", email="ada@example.com",
                                                    password=password, now=now)


async def test_passwords_are_stored_as_argon2id_at_owasp_parameters(gateway: Any) -> None:
    user_id = await _user(gateway)
    stored = await gateway.pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user_id)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PASSWORD not in stored


async def test_email_and_name_are_stored_only_sealed(gateway: Any) -> None:
    user_id = await _user(gateway)
    row = await gateway.pool.fetchval("SELECT u::text FROM users AS u WHERE id = $1", user_id)
    assert "ada@example.com" not in row.lower() and "Lovelace" not in row
    async with gateway.pool.acquire() as conn:
        assert await UserStore().profile(conn, user_id) == {"email": "ada@example.com", "name": "Ada Lovelace"}


async def test_emails_are_unique_per_tenant_whatever_their_case(gateway: Any) -> None:
    await _user(gateway)
    with pytest.raises(UserExists):
        await _user(gateway, email="ada@EXAMPLE.com")


async def test_a_hash_with_old_parameters_is_replaced_at_sign_in(gateway: Any) -> None:
    weak = UserStore(PasswordHasher(time_cost=1, memory_cost=8_192, parallelism=1))  # old parameters
    user_id = await _user(gateway, store=weak)
    before = await gateway.pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user_id)
    assert (await _sign_in(gateway, PASSWORD, T0)) is not None
    after = await gateway.pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user_id)
    assert before.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert after.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


async def test_ten_failures_lock_the_user_for_thirty_minutes(gateway: Any) -> None:
    await _user(gateway)
    for n in range(MAX_FAILURES):
        assert await _sign_in(gateway, "wrong password!", T0 + timedelta(seconds=n)) is None
    # Locked: even the right password is refused, and says nothing different.
    assert await _sign_in(gateway, PASSWORD, T0 + timedelta(minutes=1)) is None
    assert await _sign_in(gateway, PASSWORD, T0 + LOCKOUT - timedelta(seconds=1)) is None
    assert await _sign_in(gateway, PASSWORD, T0 + LOCKOUT + timedelta(seconds=10)) is not None


async def test_nine_failures_then_a_success_start_the_count_again(gateway: Any) -> None:
    await _user(gateway)
    for _ in range(MAX_FAILURES - 1):
        assert await _sign_in(gateway, "wrong password!", T0) is None
    assert await _sign_in(gateway, PASSWORD, T0) is not None
    for _ in range(MAX_FAILURES - 1):
        assert await _sign_in(gateway, "wrong password!", T0) is None
    assert await _sign_in(gateway, PASSWORD, T0) is not None


async def test_an_unknown_user_gets_the_same_answer_as_a_wrong_password(gateway: Any) -> None:
    await _user(gateway)
    async with gateway.pool.acquire() as conn:
        unknown = await UserStore().sign_in(conn, tenant_id="t1", email="nobody@example.com",
                                            password=PASSWORD, now=T0)
        other_tenant = await UserStore().sign_in(conn, tenant_id="t2", email="ada@example.com",
                                                 password=PASSWORD, now=T0)
    assert unknown is None and other_tenant is None


async def _issue(gateway: Any, user_id: str) -> str:
    async with gateway.pool.acquire() as conn:
        return await UserStore().issue_refresh(conn, user_id=user_id, tenant_id="t1", client_id="cli_a",
                                               scopes=["accounts:read"], now=T0)


async def _rotate(gateway: Any, token: str, *, client_id: str = "cli_a", now: datetime = T0) -> Any:
    async with gateway.pool.acquire() as conn:
        return await UserStore().rotate_refresh(conn, token=token, client_id=client_id, now=now)


async def test_a_refresh_token_rotates_on_every_use(gateway: Any) -> None:
    user_id = await _user(gateway)
    first = await _issue(gateway, user_id)
    second = await _rotate(gateway, first)
    third = await _rotate(gateway, second.refresh_token)
    assert second.user_id == user_id and second.scopes == {"accounts:read"}
    assert len({first, second.refresh_token, third.refresh_token}) == 3
    stored = await gateway.pool.fetch("SELECT token_hash FROM refresh_tokens")
    assert all(first.encode() not in bytes(r["token_hash"]) for r in stored)


async def test_replaying_a_used_refresh_token_revokes_its_whole_family(gateway: Any) -> None:
    user_id = await _user(gateway)
    first = await _issue(gateway, user_id)
    second = await _rotate(gateway, first)
    assert await _rotate(gateway, first) is None  # the thief (or the user) replays it
    assert await _rotate(gateway, second.refresh_token) is None  # ... and the family is dead
    other_family = await _issue(gateway, user_id)
    assert await _rotate(gateway, other_family) is not None  # other sessions are untouched


async def test_an_expired_or_foreign_refresh_token_is_refused(gateway: Any) -> None:
    user_id = await _user(gateway)
    token = await _issue(gateway, user_id)
    assert await _rotate(gateway, token, client_id="cli_b") is None
    assert await _rotate(gateway, token, now=T0 + timedelta(days=31)) is None
    assert await _rotate(gateway, "rt_" + "x" * 43) is None
