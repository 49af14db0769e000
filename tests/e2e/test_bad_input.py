"""Bad input at the public edge of a running stack: the right problem, and nothing changed.

Every request here is wrong in one way. Each must be answered with the RFC 9457
``application/problem+json`` that API.md describes (``type``, ``title``, ``status``,
``detail``, a stable snake_case ``code``, and ``errors: [{field, message}]`` for
validation) with the right status, never a 500, and must change nothing: the ledger
totals and entries of every account the module made, and the number of payments of
both tenants involved, are the same before and after (`changes_nothing`).

A few controls (a token we sign ourselves with valid claims is accepted, a 255-character
Idempotency-Key is accepted, a second client of the same tenant sees the tenant's
accounts, the same key and body replays) show that the refusals are for the one reason
each case is about and not for some other.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from paystream.contracts.ids import new_id
from paystream.contracts.money import MAX_AMOUNT
from paystream.tools.client import PaystreamClient, StackInfo

from .stack import UpProcess

PAYMENTS = "/v1/payments"
DEPOSITS = "/v1/deposits"
TERMINAL = {"succeeded", "failed", "declined"}
FUNDS = 50_000
SETTLE_SECONDS = 20.0
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
MISSING = object()  # a field left out of the body


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    """Accounts in the admin client's tenant and in a foreign one, and a limited client.

    The foreign tenant is made the way API.md allows, ``POST /v1/clients`` with another
    ``tenant``. The tests send through ``admin``, one module-scoped client, rather than
    the per-test ``client`` fixture: that one opens six httpx pools per test (about a
    quarter of a second each time), which over two hundred cases is most of the budget.
    """

    info: StackInfo
    db: asyncpg.Pool
    admin: PaystreamClient
    tenant: str
    usd: str  # funded with FUNDS
    usd2: str
    eur: str
    foreign_tenant: str
    foreign: PaystreamClient  # a client of foreign_tenant
    foreign_usd: str
    reader: PaystreamClient  # a client of `tenant` with accounts:read only
    accounts: list[str] = field(default_factory=list)

    async def snapshot(self) -> dict[str, Any]:
        """What bad input must never change, read straight from the services' schemas."""
        async with self.db.acquire() as conn:
            totals = await conn.fetch(
                "SELECT id, debits_posted, credits_posted, debits_pending, credits_pending "
                "FROM ledger.account_totals WHERE id = ANY($1::text[]) ORDER BY id",
                self.accounts,
            )
            entries = await conn.fetchval(
                "SELECT count(*) FROM ledger.entries WHERE account_id = ANY($1::text[])",
                self.accounts,
            )
            payments = await conn.fetch(
                "SELECT tenant_id, count(*) AS n FROM payments.payments "
                "WHERE tenant_id = ANY($1::text[]) GROUP BY tenant_id ORDER BY tenant_id",
                [self.tenant, self.foreign_tenant],
            )
        assert len(totals) == len(self.accounts)
        return {
            "totals": [tuple(r) for r in totals],
            "entries": entries,
            "payments": [tuple(r) for r in payments],
        }

    def payment(self, **changes: Any) -> dict[str, Any]:
        return _body({"source_account_id": self.usd, "destination_account_id": self.usd2,
                      "amount": 100, "currency": "USD"}, changes)

    def deposit(self, **changes: Any) -> dict[str, Any]:
        return _body({"account_id": self.usd2, "amount": 100, "currency": "USD"}, changes)

    def body_for(self, path: str, **changes: Any) -> dict[str, Any]:
        return self.payment(**changes) if path == PAYMENTS else self.deposit(**changes)


def _body(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    body = base | changes
    return {k: v for k, v in body.items() if v is not MISSING}


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def _settled(api: PaystreamClient, payment_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        payment = await api.get_payment(payment_id)
        if payment["status"] in TERMINAL:
            return payment
        assert time.monotonic() < deadline, f"payment never settled: {payment}"
        await asyncio.sleep(0.05)


async def _new_client(
    admin: PaystreamClient, info: StackInfo, tenant: str, scopes: list[str]
) -> PaystreamClient:
    created = await admin.call(
        "POST", "/v1/clients",
        json_body={"name": f"bad-input {tenant}", "tenant": tenant, "scopes": scopes},
    )
    assert created["tenant"] == tenant
    return PaystreamClient(info.gateway_url, created["client_id"], created["client_secret"],
                           max_connections=8)


@pytest.fixture(scope="module")
async def world(stack: UpProcess) -> AsyncIterator[World]:
    info = stack.info
    assert info is not None
    db = await asyncpg.create_pool(info.postgres_url, min_size=1, max_size=2)
    async with contextlib.AsyncExitStack() as exit_stack:
        exit_stack.push_async_callback(db.close)
        admin = PaystreamClient.for_stack(info, max_connections=8)
        exit_stack.push_async_callback(admin.close)
        tenant = _claims(await admin.token())["tenant"]
        usd = (await admin.create_account("USD"))["id"]
        usd2 = (await admin.create_account("USD"))["id"]
        eur = (await admin.create_account("EUR"))["id"]
        funding = await admin.deposit(usd, FUNDS)

        # A second tenant, through the API (POST /v1/clients, scope admin).
        foreign_tenant = f"e2e-foreign-{uuid.uuid4().hex[:8]}"
        foreign = await _new_client(admin, info, foreign_tenant, [
            "accounts:read", "accounts:write", "payments:read", "payments:write"])
        exit_stack.push_async_callback(foreign.close)
        foreign_usd = (await foreign.create_account("USD"))["id"]
        # A client of the admin's own tenant that may only read accounts.
        reader = await _new_client(admin, info, tenant, ["accounts:read"])
        exit_stack.push_async_callback(reader.close)

        assert (await _settled(admin, funding["id"]))["status"] == "succeeded"
        yield World(
            info=info, db=db, admin=admin, tenant=tenant, usd=usd, usd2=usd2, eur=eur,
            foreign_tenant=foreign_tenant, foreign=foreign, foreign_usd=foreign_usd,
            reader=reader, accounts=[usd, usd2, eur, foreign_usd],
        )


@contextlib.asynccontextmanager
async def changes_nothing(world: World) -> AsyncIterator[None]:
    before = await world.snapshot()
    yield
    assert await world.snapshot() == before


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem as API.md describes it, with this status and code."""
    assert response.status_code == status, (response.status_code, response.text)
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    assert media_type == "application/problem+json", response.headers.get("content-type")
    assert "Traceback" not in response.text
    problem = response.json()
    assert isinstance(problem, dict), problem
    for name in ("type", "title", "detail", "code"):
        assert isinstance(problem.get(name), str) and problem[name], (name, problem)
    assert problem["status"] == status, problem
    assert problem["code"] == code, problem
    assert SNAKE_CASE.match(problem["code"]), problem
    if code == "validation_error":  # API.md: validation problems list what is wrong
        errors = problem.get("errors")
        assert isinstance(errors, list) and errors, problem
        for error in errors:
            assert isinstance(error, dict), error
            assert isinstance(error.get("field"), str) and error["field"], error
            assert isinstance(error.get("message"), str) and error["message"], error
    return problem


def assert_invalid_field(response: httpx.Response, field_name: str) -> None:
    """A 422 validation problem whose ``errors`` name ``field_name``."""
    problem = assert_problem(response, 422, "validation_error")
    fields = [e["field"] for e in problem["errors"]]
    assert any(f == field_name or f.startswith(field_name + ".") for f in fields), fields


def _key() -> str:
    return uuid.uuid4().hex


async def _raw_post(
    client: PaystreamClient, path: str, content: bytes, content_type: str = "application/json"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {await client.token()}", "Content-Type": content_type,
               "Idempotency-Key": _key()}
    return await client.http.post(path, content=content, headers=headers)


ENDPOINTS = [pytest.param(PAYMENTS, id="payment"), pytest.param(DEPOSITS, id="deposit")]


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        pytest.param(b'{"amount": 100, "currency": ', "application/json", 400, "malformed_json",
                     id="truncated"),
        pytest.param(b'{"amount": 100} trailing', "application/json", 400, "malformed_json",
                     id="trailing-garbage"),
        pytest.param(b"{'amount': 100}", "application/json", 400, "malformed_json",
                     id="single-quotes"),
        pytest.param(b'{"amount": NaN}', "application/json", 400, "malformed_json", id="nan"),
        pytest.param(b'{"amount": 1e400}', "application/json", 400, "malformed_json",
                     id="number-out-of-range"),
        pytest.param(b'{"currency": "\xff"}', "application/json", 400, "malformed_json",
                     id="not-utf8"),
        pytest.param(b"amount=100", "application/json", 400, "malformed_json", id="form-as-json"),
        pytest.param(b"", "application/json", 400, "body_required", id="empty"),
        pytest.param(b'[{"amount": 100}]', "application/json", 422, "validation_error",
                     id="array"),
        pytest.param(b"null", "application/json", 422, "validation_error", id="null"),
        pytest.param(b'"amount"', "application/json", 422, "validation_error", id="string"),
        pytest.param(b'{"amount": 100}', "text/plain", 415, "unsupported_media_type",
                     id="not-json-media-type"),
    ],
)
async def test_body_that_is_not_a_json_object_is_refused_with_a_problem(
    world: World, path: str, content: bytes, content_type: str,
    status: int, code: str,
) -> None:
    async with changes_nothing(world):
        assert_problem(await _raw_post(world.admin, path, content, content_type), status, code)


async def test_malformed_json_is_refused_even_when_the_rest_would_be_valid(
    world: World
) -> None:
    body = json.dumps(world.payment()).encode()
    async with changes_nothing(world):
        assert_problem(await _raw_post(world.admin, PAYMENTS, body[:-1]), 400, "malformed_json")


AMOUNT_AND_CURRENCY = [
    pytest.param("amount", "100", id="amount-as-string"),
    pytest.param("amount", 100.0, id="amount-as-whole-float"),
    pytest.param("amount", 12.5, id="amount-as-float"),
    pytest.param("amount", True, id="amount-as-bool"),
    pytest.param("amount", None, id="amount-null"),
    pytest.param("amount", [100], id="amount-as-list"),
    pytest.param("amount", {"value": 100}, id="amount-as-object"),
    pytest.param("amount", MISSING, id="amount-missing"),
    pytest.param("amount", 0, id="amount-zero"),
    pytest.param("amount", -100, id="amount-negative"),
    pytest.param("amount", -(2**63), id="amount-int64-min"),
    pytest.param("amount", MAX_AMOUNT + 1, id="amount-above-maximum"),
    pytest.param("amount", 2**63, id="amount-above-int64"),
    pytest.param("amount", 2**64, id="amount-above-uint64"),
    pytest.param("amount", 10**40, id="amount-huge"),
    pytest.param("currency", "ABC", id="currency-unknown"),
    pytest.param("currency", "XXX", id="currency-iso-but-unsupported"),
    pytest.param("currency", "usd", id="currency-lowercase"),
    pytest.param("currency", "Usd", id="currency-mixed-case"),
    pytest.param("currency", " USD", id="currency-padded"),
    pytest.param("currency", "US", id="currency-too-short"),
    pytest.param("currency", "USDT", id="currency-too-long"),
    pytest.param("currency", 840, id="currency-numeric-code"),
    pytest.param("currency", None, id="currency-null"),
    pytest.param("currency", MISSING, id="currency-missing"),
    pytest.param("colour", "blue", id="unknown-field"),
    pytest.param("status", "succeeded", id="unknown-field-status"),
    pytest.param("metadata", {"k": 1}, id="metadata-value-not-string"),
    pytest.param("metadata", ["k"], id="metadata-not-object"),
    pytest.param("metadata", {"k" * 41: "v"}, id="metadata-key-too-long"),
    pytest.param("description", "d" * 1001, id="description-too-long"),
    pytest.param("description", 7, id="description-not-string"),
    # PostgreSQL text cannot hold U+0000: refused at the door, not a 500 from a service.
    pytest.param("description", "a\u0000b", id="description-with-nul"),
    pytest.param("metadata", {"order": "4\u00002"}, id="metadata-value-with-nul"),
    pytest.param("metadata", {"ord\u0000er": "42"}, id="metadata-key-with-nul"),
]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(("field_name", "value"), AMOUNT_AND_CURRENCY)
async def test_body_that_breaks_the_schema_is_a_422_naming_the_field(
    world: World, path: str, field_name: str, value: Any
) -> None:
    body = world.body_for(path, **{field_name: value})
    async with changes_nothing(world):
        response = await world.admin.request("POST", path, json_body=body, idempotency_key=_key())
        assert_invalid_field(response, field_name)


BAD_ACCOUNT_IDS = [
    pytest.param("nope", id="not-an-id"),
    pytest.param("", id="empty"),
    pytest.param("acc_" + "0" * 25, id="too-short"),
    pytest.param(new_id("acc").lower(), id="lowercase"),
    pytest.param(new_id("pay"), id="payment-id"),
    pytest.param(" " + new_id("acc"), id="padded"),
    pytest.param(new_id("acc")[:-1] + "\u0000", id="with-nul"),
    pytest.param(123, id="number"),
    pytest.param(None, id="null"),
    pytest.param(MISSING, id="missing"),
]
ACCOUNT_FIELDS = [
    pytest.param(PAYMENTS, "source_account_id", id="payment-source"),
    pytest.param(PAYMENTS, "destination_account_id", id="payment-destination"),
    pytest.param(DEPOSITS, "account_id", id="deposit-account"),
]


@pytest.mark.parametrize(("path", "field_name"), ACCOUNT_FIELDS)
@pytest.mark.parametrize("value", BAD_ACCOUNT_IDS)
async def test_account_id_that_is_not_an_account_id_is_a_422_naming_the_field(
    world: World, path: str, field_name: str, value: Any
) -> None:
    body = world.body_for(path, **{field_name: value})
    async with changes_nothing(world):
        response = await world.admin.request("POST", path, json_body=body, idempotency_key=_key())
        assert_invalid_field(response, field_name)


@pytest.mark.parametrize(("path", "field_name"), ACCOUNT_FIELDS)
async def test_well_formed_account_id_that_does_not_exist_is_a_404(
    world: World, path: str, field_name: str
) -> None:
    body = world.body_for(path, **{field_name: new_id("acc")})
    async with changes_nothing(world):
        response = await world.admin.request("POST", path, json_body=body, idempotency_key=_key())
        assert_problem(response, 404, "account_not_found")


@pytest.mark.parametrize(
    ("make_body"),
    [
        pytest.param(lambda w: w.payment(currency="EUR"), id="eur-payment-between-usd-accounts"),
        pytest.param(lambda w: w.payment(destination_account_id=w.eur),
                     id="usd-payment-usd-to-eur-account"),
        pytest.param(lambda w: w.payment(destination_account_id=w.eur, currency="EUR"),
                     id="eur-payment-usd-to-eur-account"),
        pytest.param(lambda w: w.payment(source_account_id=w.eur, destination_account_id=w.usd),
                     id="usd-payment-eur-to-usd-account"),
        pytest.param(lambda w: w.deposit(currency="EUR"), id="eur-deposit-into-usd-account"),
        pytest.param(lambda w: w.deposit(account_id=w.eur), id="usd-deposit-into-eur-account"),
    ],
)
async def test_currency_that_differs_from_an_accounts_is_a_422_currency_mismatch(
    world: World, make_body: Callable[[World], dict[str, Any]]
) -> None:
    body = make_body(world)
    path = DEPOSITS if "account_id" in body else PAYMENTS
    async with changes_nothing(world):
        response = await world.admin.request("POST", path, json_body=body, idempotency_key=_key())
        assert_problem(response, 422, "currency_mismatch")


async def test_payment_to_the_same_account_is_a_422(world: World) -> None:
    body = world.payment(destination_account_id=world.usd)
    async with changes_nothing(world):
        response = await world.admin.request("POST", PAYMENTS, json_body=body, idempotency_key=_key())
        assert_problem(response, 422, "same_account")


# --------------------------------------------------------------------------- tenants


@pytest.mark.parametrize(
    "make_body",
    [
        pytest.param(lambda w: w.payment(destination_account_id=w.foreign_usd),
                     id="payment-to-foreign-account"),
        pytest.param(lambda w: w.payment(source_account_id=w.foreign_usd),
                     id="payment-from-foreign-account"),
        pytest.param(lambda w: w.deposit(account_id=w.foreign_usd),
                     id="deposit-into-foreign-account"),
    ],
)
async def test_another_tenants_account_is_404_not_403_for_payments_and_deposits(
    world: World, make_body: Callable[[World], dict[str, Any]]
) -> None:
    body = make_body(world)
    path = DEPOSITS if "account_id" in body else PAYMENTS
    async with changes_nothing(world):
        response = await world.admin.request("POST", path, json_body=body, idempotency_key=_key())
        problem = assert_problem(response, 404, "account_not_found")
    assert world.foreign_tenant not in json.dumps(problem)


@pytest.mark.parametrize("suffix", [pytest.param("", id="account"),
                                    pytest.param("/entries", id="entries")])
async def test_another_tenants_account_cannot_be_read(
    world: World, suffix: str
) -> None:
    response = await world.admin.request("GET", f"/v1/accounts/{world.foreign_usd}{suffix}")
    assert_problem(response, 404, "account_not_found")


async def test_another_tenant_cannot_move_money_out_of_our_account(world: World) -> None:
    body = world.payment(destination_account_id=world.foreign_usd)
    async with changes_nothing(world):
        response = await world.foreign.request("POST", PAYMENTS, json_body=body,
                                               idempotency_key=_key())
        assert_problem(response, 404, "account_not_found")
    listed = await world.foreign.call("GET", PAYMENTS, params={"account_id": world.usd})
    assert listed["data"] == []


async def test_a_second_client_of_the_same_tenant_is_not_foreign(world: World) -> None:
    # Tenancy, not the client, is the boundary: a client of the admin's tenant sees its
    # accounts (so "foreign" above really means another tenant, created via /v1/clients).
    account = await world.reader.call("GET", f"/v1/accounts/{world.usd}")
    assert account["id"] == world.usd
    assert account["balance"]["posted"] == FUNDS


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Signer:
    """Signs tokens with the stack's own current key, so only the claims we break are wrong.

    The key is read from the throwaway stack's ``gateway.signing_keys`` through the
    superuser URL the fixture hands out; it is the only way to make an expired token
    that is otherwise valid, so that its refusal shows ``exp`` is checked.
    """

    kid: str
    key: Ed25519PrivateKey
    public_raw: bytes
    claims: dict[str, Any]

    def fresh_claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = self.claims | {"iat": now, "nbf": now, "exp": now + 300,
                                "jti": uuid.uuid4().hex[:24]}
        return _body(claims, changes)

    def sign(self, claims: dict[str, Any], key: Ed25519PrivateKey | None = None,
             **header: Any) -> str:
        return jwt.encode(claims, key or self.key, algorithm="EdDSA",
                          headers={"kid": self.kid, "typ": "at+jwt", **header})


@pytest.fixture(scope="module")
async def signer(world: World) -> Signer:
    token = await world.admin.token()
    kid = jwt.get_unverified_header(token)["kid"]
    async with world.db.acquire() as conn:
        pem = await conn.fetchval(
            "SELECT private_pem FROM gateway.signing_keys WHERE kid = $1", kid)
    assert pem is not None
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    public_raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
    return Signer(kid=kid, key=key, public_raw=public_raw, claims=_claims(token))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"


def _alg_none(s: Signer) -> str:
    return _unsigned({"alg": "none", "typ": "at+jwt", "kid": s.kid}, s.fresh_claims()) + "."


def _hs256_with_public_key(s: Signer) -> str:
    signing_input = _unsigned({"alg": "HS256", "typ": "at+jwt", "kid": s.kid}, s.fresh_claims())
    mac = hmac.new(s.public_raw, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(mac)}"


def _tampered(s: Signer) -> str:
    # A genuine token of the stack with its claims swapped for more powerful ones.
    header, _, signature = s.sign(s.fresh_claims(scope="accounts:read")).split(".")
    claims = _b64url(json.dumps(s.fresh_claims()).encode())
    return f"{header}.{claims}.{signature}"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _basic_scheme(s: Signer, info: StackInfo) -> dict[str, str]:
    # The admin client's real credentials, but not as a bearer token.
    pair = base64.b64encode(f"{info.client_id}:{info.client_secret}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


BAD_AUTHORIZATION: dict[str, Callable[[Signer, StackInfo], dict[str, str]]] = {
    "missing": lambda s, i: {},
    "scheme-only": lambda s, i: {"Authorization": "Bearer"},
    "token-without-scheme": lambda s, i: {"Authorization": s.sign(s.fresh_claims())},
    "basic-scheme": _basic_scheme,
    "garbage": lambda s, i: _bearer("garbage"),
    "three-garbage-segments": lambda s, i: _bearer("a.b.c"),
    "too-long": lambda s, i: _bearer("a" * 5000),
    "client-secret-as-token": lambda s, i: _bearer(i.client_secret),
    "alg-none": lambda s, i: _bearer(_alg_none(s)),
    "forged-with-a-random-key": lambda s, i: _bearer(
        s.sign(s.fresh_claims(), Ed25519PrivateKey.generate())),
    "forged-with-a-random-key-and-kid": lambda s, i: _bearer(
        s.sign(s.fresh_claims(), Ed25519PrivateKey.generate(), kid="k_0123456789abcdef")),
    "hs256-keyed-with-the-public-key": lambda s, i: _bearer(_hs256_with_public_key(s)),
    "tampered-claims": lambda s, i: _bearer(_tampered(s)),
    "expired": lambda s, i: _bearer(s.sign(s.fresh_claims(
        iat=int(time.time()) - 3600, nbf=int(time.time()) - 3600, exp=int(time.time()) - 600))),
    "not-yet-valid": lambda s, i: _bearer(s.sign(s.fresh_claims(
        nbf=int(time.time()) + 600, exp=int(time.time()) + 1200))),
    "wrong-audience": lambda s, i: _bearer(s.sign(s.fresh_claims(aud="someone-else"))),
    "wrong-issuer": lambda s, i: _bearer(s.sign(s.fresh_claims(iss="https://evil.example"))),
    "without-exp": lambda s, i: _bearer(s.sign(s.fresh_claims(exp=MISSING))),
    "without-tenant": lambda s, i: _bearer(s.sign(s.fresh_claims(tenant=MISSING))),
}


async def test_a_token_we_sign_with_the_stacks_key_and_valid_claims_is_accepted(
    world: World, signer: Signer
) -> None:
    # The control for the cases below: the crafted tokens are refused for what they break.
    response = await world.admin.http.get(f"/v1/accounts/{world.usd}",
                                     headers=_bearer(signer.sign(signer.fresh_claims())))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == world.usd


@pytest.mark.parametrize("case", list(BAD_AUTHORIZATION))
async def test_request_without_a_valid_access_token_is_a_401(
    world: World, signer: Signer, case: str
) -> None:
    headers = BAD_AUTHORIZATION[case](signer, world.info) | {"Idempotency-Key": _key()}
    async with changes_nothing(world):
        response = await world.admin.http.post(PAYMENTS, json=world.payment(), headers=headers)
        assert_problem(response, 401, "unauthorized")
    assert response.headers.get("www-authenticate", "").startswith("Bearer")


@pytest.mark.parametrize(
    ("method", "path", "make_body"),
    [
        pytest.param("POST", PAYMENTS, lambda w: w.payment(), id="create-payment"),
        pytest.param("POST", DEPOSITS, lambda w: w.deposit(), id="create-deposit"),
        pytest.param("POST", "/v1/accounts", lambda w: {"currency": "USD"}, id="create-account"),
        pytest.param("GET", PAYMENTS, None, id="list-payments"),
        pytest.param("GET", "/v1/reviews", None, id="list-reviews"),
        pytest.param("POST", "/v1/webhook_endpoints",
                     lambda w: {"url": "http://127.0.0.1:9/hook", "events": ["payment.failed"]},
                     id="create-webhook-endpoint"),
        pytest.param("POST", "/v1/clients",
                     lambda w: {"name": "x", "tenant": w.tenant, "scopes": ["admin"]},
                     id="create-client"),
    ],
)
async def test_token_without_the_routes_scope_is_a_403(
    world: World, method: str, path: str, make_body: Callable[[World], Any] | None
) -> None:
    body = make_body(world) if make_body is not None else None
    async with changes_nothing(world):
        response = await world.reader.request(method, path, json_body=body,
                                              idempotency_key=_key())
        assert_problem(response, 403, "insufficient_scope")


async def test_token_narrowed_to_read_scopes_cannot_create_payments(world: World) -> None:
    granted = await world.admin.http.post("/oauth/token", data={
        "grant_type": "client_credentials", "client_id": world.info.client_id,
        "client_secret": world.info.client_secret, "scope": "accounts:read payments:read"})
    assert granted.status_code == 200, granted.text
    assert granted.json()["scope"] == "accounts:read payments:read"
    headers = _bearer(granted.json()["access_token"]) | {"Idempotency-Key": _key()}
    async with changes_nothing(world):
        response = await world.admin.http.post(PAYMENTS, json=world.payment(), headers=headers)
        assert_problem(response, 403, "insufficient_scope")


@pytest.mark.parametrize(
    ("form", "status", "code"),
    [
        pytest.param({"client_secret": "pss_wrong"}, 401, "invalid_client", id="wrong-secret"),
        pytest.param({"client_id": "cli_" + "0" * 26}, 401, "invalid_client", id="unknown-client"),
        pytest.param({"client_secret": MISSING}, 401, "invalid_client", id="no-secret"),
        pytest.param({"grant_type": "authorization_code"}, 400, "unsupported_grant_type",
                     id="unsupported-grant"),
        pytest.param({"grant_type": MISSING}, 400, "unsupported_grant_type", id="no-grant"),
        pytest.param({"scope": "payments:write superpowers"}, 400, "invalid_scope",
                     id="scope-not-granted"),
    ],
)
async def test_token_request_with_bad_credentials_or_grant_is_refused(
    world: World, form: dict[str, Any], status: int, code: str
) -> None:
    base = {"grant_type": "client_credentials", "client_id": world.info.client_id,
            "client_secret": world.info.client_secret}
    response = await world.admin.http.post("/oauth/token", data=_body(base, form))
    assert_problem(response, status, code)
    assert "access_token" not in response.json()


async def test_token_request_that_is_not_a_form_is_a_400(
    world: World
) -> None:
    response = await world.admin.http.post("/oauth/token", json={
        "grant_type": "client_credentials", "client_id": world.info.client_id,
        "client_secret": world.info.client_secret})
    assert_problem(response, 400, "invalid_request")


# --------------------------------------------------------------------------- Idempotency-Key


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_money_movement_without_an_idempotency_key_is_a_400(
    world: World, path: str
) -> None:
    async with changes_nothing(world):
        response = await world.admin.request("POST", path, json_body=world.body_for(path))
        assert_problem(response, 400, "idempotency_key_required")


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "key",
    [
        pytest.param("k" * 256, id="256-chars"),
        pytest.param("k" * 4000, id="4000-chars"),
        pytest.param("", id="empty"),
        pytest.param(b"k\xc3\xa9y", id="not-ascii"),
    ],
)
async def test_idempotency_key_outside_1_to_255_printable_chars_is_a_400(
    world: World, path: str, key: str | bytes
) -> None:
    async with changes_nothing(world):
        response = await world.admin.request("POST", path, json_body=world.body_for(path),
                                        headers={"Idempotency-Key": key})  # type: ignore[dict-item]
        assert_problem(response, 400, "invalid_idempotency_key")


@pytest.mark.parametrize(("path", "field_name"), ACCOUNT_FIELDS)
async def test_idempotency_key_of_255_chars_is_accepted(
    world: World, path: str, field_name: str
) -> None:
    # The boundary control: the key passes and the request reaches payments, which refuses
    # the (nonexistent) account, so nothing is created here either.
    body = world.body_for(path, **{field_name: new_id("acc")})
    key = "k" * 223 + uuid.uuid4().hex
    assert len(key) == 255
    async with changes_nothing(world):
        response = await world.admin.request("POST", path, json_body=body, idempotency_key=key)
        assert_problem(response, 404, "account_not_found")


@dataclass(frozen=True)
class KeyedPayment:
    key: str
    body: dict[str, Any]
    payment: dict[str, Any]


@pytest.fixture(scope="module")
async def keyed_payment(world: World) -> KeyedPayment:
    """One real transfer under a known key, settled, so later reuses of the key are visible."""
    key = f"bad-input-{uuid.uuid4().hex}"
    body = world.payment(amount=250, description="first use of the key")
    response = await world.admin.request("POST", PAYMENTS, json_body=body, idempotency_key=key)
    assert response.status_code == 202, response.text
    payment = await _settled(world.admin, response.json()["id"])
    assert payment["status"] == "succeeded", payment
    return KeyedPayment(key=key, body=body, payment=payment)


@pytest.mark.parametrize(
    "reuse",
    [
        pytest.param(lambda w, b: (PAYMENTS, b | {"amount": 251}), id="other-amount"),
        pytest.param(lambda w, b: (PAYMENTS, b | {"destination_account_id": w.eur,
                                                  "currency": "EUR"}), id="other-destination"),
        pytest.param(lambda w, b: (PAYMENTS, b | {"description": "second use"}),
                     id="other-description"),
        pytest.param(lambda w, b: (PAYMENTS, b | {"metadata": {"order": "42"}}),
                     id="added-metadata"),
        pytest.param(lambda w, b: (PAYMENTS, _body(b, {"description": MISSING})),
                     id="field-left-out"),
        pytest.param(lambda w, b: (DEPOSITS, w.deposit(account_id=w.usd, amount=250)),
                     id="same-key-on-deposits"),
    ],
)
async def test_same_idempotency_key_with_another_request_is_a_422(
    world: World, keyed_payment: KeyedPayment,
    reuse: Callable[[World, dict[str, Any]], tuple[str, dict[str, Any]]],
) -> None:
    path, body = reuse(world, keyed_payment.body)
    assert (path, body) != (PAYMENTS, keyed_payment.body)
    async with changes_nothing(world):
        response = await world.admin.request("POST", path, json_body=body,
                                        idempotency_key=keyed_payment.key)
        assert_problem(response, 422, "idempotency_key_reused")
    async with world.db.acquire() as conn:
        uses = await conn.fetchval(
            "SELECT count(*) FROM payments.payments WHERE idempotency_key = $1",
            f"{world.info.client_id}:{keyed_payment.key}")
    assert uses == 1


async def test_same_idempotency_key_with_the_same_request_replays_the_first_answer(
    world: World, keyed_payment: KeyedPayment
) -> None:
    # The control for the mismatch cases: the key is live, and the same body is a replay.
    async with changes_nothing(world):
        response = await world.admin.request("POST", PAYMENTS, json_body=keyed_payment.body,
                                        idempotency_key=keyed_payment.key)
    assert response.status_code == 202, response.text
    assert response.headers.get("idempotent-replayed") == "true"
    assert response.json()["id"] == keyed_payment.payment["id"]


# --------------------------------------------------------------------------- reads


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        pytest.param(PAYMENTS, {"limit": 0}, "validation_error", id="limit-zero"),
        pytest.param(PAYMENTS, {"limit": 101}, "validation_error", id="limit-above-100"),
        pytest.param(PAYMENTS, {"limit": "ten"}, "validation_error", id="limit-not-a-number"),
        pytest.param(PAYMENTS, {"status": "paid"}, "validation_error", id="unknown-status"),
        pytest.param(PAYMENTS, {"starting_after": "acc_x"}, "invalid_cursor",
                     id="cursor-not-a-payment-id"),
        pytest.param("/v1/accounts/{usd}/entries", {"limit": -1}, "validation_error",
                     id="entries-limit-negative"),
        pytest.param("/v1/accounts/{usd}/entries", {"starting_after": "pay_1"}, "invalid_cursor",
                     id="entries-cursor-not-an-entry-id"),
    ],
)
async def test_list_with_bad_query_is_a_422(
    world: World, path: str, params: dict[str, Any], code: str
) -> None:
    response = await world.admin.request("GET", path.format(usd=world.usd), params=params)
    assert_problem(response, 422, code)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        pytest.param("/v1/payments/pay_nope", "payment_not_found", id="payment-malformed-id"),
        pytest.param("/v1/payments/{pay}", "payment_not_found", id="payment-never-created"),
        pytest.param("/v1/payments/{pay}/events", "payment_not_found", id="events-never-created"),
        pytest.param("/v1/accounts/nope", "account_not_found", id="account-malformed-id"),
        pytest.param("/v1/accounts/{acc}", "account_not_found", id="account-never-created"),
    ],
)
async def test_reading_an_object_that_does_not_exist_is_a_404(
    world: World, path: str, code: str
) -> None:
    response = await world.admin.request("GET", path.format(pay=new_id("pay"), acc=new_id("acc")))
    assert_problem(response, 404, code)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        pytest.param("DELETE", "/v1/payments", {"GET", "POST"}, id="payments"),
        pytest.param("PUT", "/v1/accounts", {"POST"}, id="accounts"),
        pytest.param("POST", "/v1/webhook_endpoints/whe_x", {"DELETE", "GET"}, id="webhook-endpoint"),
        pytest.param("OPTIONS", "/v1/transfers", {"POST"}, id="transfers"),
    ],
)
async def test_a_method_a_path_does_not_serve_is_a_405_naming_every_method_it_does(
    world: World, method: str, path: str, allowed: set[str]
) -> None:
    async with changes_nothing(world):
        response = await world.admin.request(method, path, idempotency_key=_key())
    assert_problem(response, 405, "method_not_allowed")
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


@pytest.mark.parametrize(
    ("method", "path", "body", "field_name"),
    [
        pytest.param("POST", "/v1/accounts", {"currency": "USD", "metadata": {"k": "\u0000"}},
                     "metadata", id="account-metadata"),
        pytest.param("POST", "/v1/accounts", {"currency": "USD", "owner_user_id": "usr\u0000"},
                     "owner_user_id", id="account-owner"),
        pytest.param("POST", "/v1/webhook_endpoints",
                     {"url": "http://127.0.0.1:9/\u0000", "events": ["payment.failed"]}, "url",
                     id="webhook-url"),
        pytest.param("POST", "/v1/reviews/rev_x/approve", {"note": "\u0000"}, "note",
                     id="review-note"),
        pytest.param("POST", "/v1/clients",
                     {"name": "\u0000", "tenant": "t", "scopes": ["accounts:read"]}, "name",
                     id="client-name"),
        pytest.param("GET", "/v1/accounts/%00", None, "account_id", id="account-id-in-path"),
        pytest.param("GET", "/v1/accounts/%00/entries", None, "account_id",
                     id="entries-account-id-in-path"),
        pytest.param("GET", "/v1/payments/pay_%00", None, "payment_id", id="payment-id-in-path"),
        pytest.param("GET", "/v1/payments/%00/events", None, "payment_id",
                     id="events-payment-id-in-path"),
        pytest.param("GET", "/v1/webhook_endpoints/%00", None, "endpoint_id",
                     id="webhook-endpoint-id-in-path"),
        pytest.param("POST", "/v1/reviews/%00/approve", None, "review_id",
                     id="review-id-in-path"),
        pytest.param("GET", "/v1/payments?account_id=acc_%00", None, "account_id",
                     id="account-id-in-query"),
    ],
)
async def test_nul_character_anywhere_is_a_422_not_a_500(
    world: World, method: str, path: str, body: Any, field_name: str
) -> None:
    async with changes_nothing(world):
        response = await world.admin.request(method, path, json_body=body, idempotency_key=_key())
        assert_invalid_field(response, field_name)


# --------------------------------------------------------------------------- size limits


async def test_a_body_declared_larger_than_the_limit_is_refused_before_it_is_read(world: World) -> None:
    # Content-Length says 10 MB; only two bytes follow. The gateway must answer without them.
    url = httpx.URL(world.info.gateway_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        b"POST /v1/accounts HTTP/1.1\r\nHost: gateway\r\n"
        + f"Authorization: Bearer {await world.admin.token()}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 10485760\r\n\r\n{}"
    )
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"application/problem+json" in head.lower()


async def test_a_streamed_body_past_the_limit_is_refused(world: World) -> None:
    async def chunks() -> Any:
        for _ in range(200):
            yield b" " * 1024  # 200 KiB of whitespace, sent without a Content-Length

    async with httpx.AsyncClient(base_url=world.info.gateway_url, timeout=10) as http:
        response = await http.post(
            "/v1/accounts", content=chunks(), headers={
                "Authorization": f"Bearer {await world.admin.token()}",
                "Content-Type": "application/json",
            },
        )
    assert_problem(response, 413, "payload_too_large")


async def test_headers_past_the_limit_get_a_431_problem(world: World) -> None:
    async with httpx.AsyncClient(base_url=world.info.gateway_url, timeout=10) as http:
        response = await http.get("/v1/payments", headers={
            "Authorization": f"Bearer {await world.admin.token()}", "X-Padding": "a" * 20_000})
    assert_problem(response, 431, "headers_too_large")


@pytest.mark.parametrize("depth", [17, 200, 5_000])
async def test_json_nested_past_the_limit_is_refused(world: World, depth: int) -> None:
    body = '{"currency": "USD", "metadata": {"x": ' + "[" * depth + "]" * depth + "}}"
    async with httpx.AsyncClient(base_url=world.info.gateway_url, timeout=10) as http:
        response = await http.post("/v1/accounts", content=body.encode(), headers={
            "Authorization": f"Bearer {await world.admin.token()}", "Content-Type": "application/json"})
    # orjson itself refuses past 1024 levels; below that the gateway's own limit answers.
    assert_problem(response, 400, "json_too_deep" if depth < 1024 else "malformed_json")
