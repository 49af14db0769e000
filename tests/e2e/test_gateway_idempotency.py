"""`Idempotency-Key` on the writes the gateway serves itself (cards, users, clients), as on
every other POST: a retry with the same key and body gets the first answer and creates
nothing; the same key with another body is a 422. What the gateway keeps for a replay holds
no card number, CVC, password, email or client secret in clear."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from paystream.tools.client import PaystreamClient

from .stack import UpProcess

CARD = {"number": "4111 1111 1111 1111", "exp_month": 12, "exp_year": 2031, "cvc": "123"}


def _bodies() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Per route: a body, and another body for the same key."""
    email = f"idem-{uuid.uuid4().hex[:8]}@example.com"
    return {
        "/v1/cards": (CARD, {**CARD, "cvc": "124"}),
        "/v1/users": ({"email": email, "password": "a long enough passphrase", "name": "Ada"},
                      {"email": email, "password": "another long passphrase", "name": "Ada"}),
        "/v1/clients": ({"name": f"idem-{uuid.uuid4().hex[:6]}", "tenant": "default", "scopes": ["payments:read"]},
                        {"name": "someone else", "tenant": "default", "scopes": ["payments:read"]}),
    }


TABLES = {"/v1/cards": "cards", "/v1/users": "users", "/v1/clients": "clients"}
IDS = {"/v1/cards": "id", "/v1/users": "id", "/v1/clients": "client_id"}


@pytest.mark.parametrize("path", list(TABLES))
async def test_a_retried_local_write_with_its_key_creates_one_object_and_replays_the_answer(
    stack: UpProcess, client: PaystreamClient, path: str,
) -> None:
    assert stack.info is not None
    body, other = _bodies()[path]
    key = uuid.uuid4().hex
    db = await asyncpg.connect(stack.info.postgres_url)
    try:
        before = await db.fetchval(f"SELECT count(*) FROM gateway.{TABLES[path]}")
        first = await client.request("POST", path, json_body=body, idempotency_key=key)
        again = await client.request("POST", path, json_body=body, idempotency_key=key)
        changed = await client.request("POST", path, json_body=other, idempotency_key=key)
        after = await db.fetchval(f"SELECT count(*) FROM gateway.{TABLES[path]}")
        kept = await db.fetchval("SELECT response_body FROM gateway.idempotency_keys WHERE key = $1", key)
    finally:
        await db.close()

    assert (first.status_code, again.status_code, changed.status_code) == (201, 201, 422), again.text
    assert again.headers.get("idempotent-replayed") == "true"
    assert after == before + 1
    assert again.json()[IDS[path]] == first.json()[IDS[path]]
    assert changed.json()["code"] == "idempotency_key_reused"
    stored = bytes(kept)
    for secret in ("4111111111111111", "4111 1111 1111 1111", body.get("password", "\x00"), body.get("email", "\x00")):
        assert secret.encode() not in stored, f"{secret!r} kept in clear for {path}"
    if path == "/v1/clients":
        secret = first.json()["client_secret"]
        assert secret and secret.encode() not in stored
        # Shown once: the replay names the same client, without its secret.
        assert again.json() == {**first.json(), "client_secret": None}
    else:
        assert again.json() == first.json()


async def test_a_local_write_with_a_malformed_key_is_a_400(client: PaystreamClient) -> None:
    response = await client.request("POST", "/v1/cards", json_body=CARD, idempotency_key="k" * 256)
    assert response.status_code == 400 and response.json()["code"] == "invalid_idempotency_key"
