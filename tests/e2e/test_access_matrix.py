"""Object-level access: every (caller, route, whose object) cell answers as it should.

Callers: the tenant's admin client, a read-only client of the same tenant, a wallet user
(who owns one account), and a client of another tenant. Objects: the user's own account
and a payment from it, and another user's account in the same tenant. Another tenant's
objects answer 404 (not 403), so ids do not leak; a missing scope answers 403.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from paystream.tools.client import PaystreamClient

from .stack import UpProcess

PASSWORD = "matrix passphrase 123"


@dataclass
class World:
    http: httpx.AsyncClient
    tokens: dict[str, str]
    objects: dict[str, str]


async def _client_token(http: httpx.AsyncClient, admin: PaystreamClient, tenant: str, scopes: list[str]) -> str:
    made = await admin.call("POST", "/v1/clients", json_body={"name": "matrix", "tenant": tenant, "scopes": scopes})
    token = await http.post("/oauth/token", data={"grant_type": "client_credentials",
                                                   "client_id": made["client_id"],
                                                   "client_secret": made["client_secret"]})
    return str(token.json()["access_token"])


async def _user_token(http: httpx.AsyncClient, admin: PaystreamClient, client_id: str) -> str:
    email = f"m-{uuid.uuid4().hex[:8]}@example.com"
    await admin.call("POST", "/v1/users", json_body={"email": email, "password": PASSWORD, "name": "M"})
    token = await http.post("/oauth/token", data={"grant_type": "password", "client_id": client_id,
                                                   "username": email, "password": PASSWORD})
    return str(token.json()["access_token"])


@pytest.fixture(scope="module")
async def world(stack: UpProcess) -> AsyncIterator[World]:
    assert stack.info is not None
    async with PaystreamClient.for_stack(stack.info, max_connections=4) as admin, \
            httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=10) as http:
        tokens = {
            "admin": await admin.token(),
            "reader": await _client_token(http, admin, "default", ["accounts:read", "payments:read"]),
            "user": await _user_token(http, admin, stack.info.client_id),
            "other_user": await _user_token(http, admin, stack.info.client_id),
            "other_tenant": await _client_token(http, admin, "matrix-other", [
                "accounts:read", "accounts:write", "payments:read", "payments:write"]),
        }
        own = await http.post("/v1/accounts", json={"currency": "USD"}, headers=_auth(tokens["user"]))
        theirs = await http.post("/v1/accounts", json={"currency": "USD"}, headers=_auth(tokens["other_user"]))
        payment = await http.post(
            "/v1/payments", headers={**_auth(tokens["user"]), "Idempotency-Key": uuid.uuid4().hex},
            json={"source_account_id": own.json()["id"], "destination_account_id": theirs.json()["id"],
                  "amount": 100, "currency": "USD"})
        assert payment.status_code == 202, payment.text
        yield World(http, tokens, {"own": own.json()["id"], "theirs": theirs.json()["id"],
                                   "payment": payment.json()["id"]})


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _call(world: World, caller: str, route: str) -> int:
    o = world.objects
    headers = {**_auth(world.tokens[caller]), "Idempotency-Key": uuid.uuid4().hex}
    requests: dict[str, tuple[str, str, Any]] = {
        "read own account": ("GET", f"/v1/accounts/{o['own']}", None),
        "read own entries": ("GET", f"/v1/accounts/{o['own']}/entries", None),
        "read their account": ("GET", f"/v1/accounts/{o['theirs']}", None),
        "read the payment": ("GET", f"/v1/payments/{o['payment']}", None),
        "read the payment's timeline": ("GET", f"/v1/payments/{o['payment']}/events", None),
        "pay from own account": ("POST", "/v1/payments", {
            "source_account_id": o["own"], "destination_account_id": o["theirs"], "amount": 1, "currency": "USD"}),
        "pay from their account": ("POST", "/v1/payments", {
            "source_account_id": o["theirs"], "destination_account_id": o["own"], "amount": 1, "currency": "USD"}),
    }
    method, path, body = requests[route]
    response = await world.http.request(method, path, json=body, headers=headers)
    assert response.status_code < 500, response.text
    return response.status_code


MATRIX = {
    # caller:            own acct, entries, their acct, payment, timeline, pay own, pay theirs
    "admin":            (200, 200, 200, 200, 200, 202, 202),
    "reader":           (200, 200, 200, 200, 200, 403, 403),
    "user":             (200, 200, 404, 200, 200, 202, 404),
    "other_user":       (404, 404, 200, 200, 200, 404, 202),
    "other_tenant":     (404, 404, 404, 404, 404, 404, 404),
}
ROUTES = ("read own account", "read own entries", "read their account", "read the payment",
          "read the payment's timeline", "pay from own account", "pay from their account")
CELLS = [(caller, route, MATRIX[caller][i]) for caller in MATRIX for i, route in enumerate(ROUTES)]


@pytest.mark.parametrize(("caller", "route", "expected"), CELLS, ids=[f"{c}-{r}" for c, r, _ in CELLS])
async def test_access_matrix_cell(world: World, caller: str, route: str, expected: int) -> None:
    assert await _call(world, caller, route) == expected
