"""The gateway's request-path steps, each driven alone (no server, no pipeline): who the
caller is (`authenticate`), whether the body may go on (`forward.read_body`), and whether
the Idempotency-Key is acceptable (`idempotency.key_refused`)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from pydantic import BaseModel
from starlette.requests import Request

from paystream.gateway.authenticate import Authenticate, insufficient_scope, unauthorized
from paystream.gateway.edge import ApiError
from paystream.gateway.forward import Invalid, nul_in_params, read_body
from paystream.gateway.idempotency import SHOWN_AS_STORED, key_refused, without_secret
from paystream.gateway.identity.keys import SigningKey, load_key, new_signing_key
from paystream.gateway.identity.tokens import TokenService


def _request(headers: dict[str, str] | None = None, body: bytes = b"", query: str = "",
             path_params: dict[str, str] | None = None) -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http", "method": "POST", "path": "/v1/x", "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("203.0.113.9", 5000), "path_params": path_params or {},
    }
    return Request(scope, receive)


def _tokens(audience: str = "paystream", key: SigningKey | None = None) -> TokenService:
    tokens = TokenService(issuer="https://issuer.test", audience=audience, ttl_seconds=300)
    if key is None:
        kid, pem, _ = new_signing_key()
        key = load_key(kid, pem, time.time())
    tokens.set_keys([key])
    return tokens


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- authenticate ------------------------------------------------------------------------


def test_authenticate_returns_the_principal_of_a_valid_bearer_token() -> None:
    tokens = _tokens()
    token = tokens.issue(client_id="cli_a", tenant_id="t1", scopes=frozenset({"payments:read"}))
    principal = Authenticate(tokens)(_request(_bearer(token)))
    assert principal is not None
    assert (principal.client_id, principal.tenant_id, principal.scopes) == ("cli_a", "t1",
                                                                            frozenset({"payments:read"}))


def test_authenticate_accepts_the_scheme_in_any_case() -> None:
    tokens = _tokens()
    token = tokens.issue(client_id="cli_a", tenant_id="t1", scopes=frozenset())
    assert Authenticate(tokens)(_request({"Authorization": f"bEaReR {token}"})) is not None


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic Y2xpOnNlY3JldA==", "Token abc"])
def test_authenticate_finds_no_caller_without_a_bearer_token(header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    assert Authenticate(_tokens())(_request(headers)) is None


def test_authenticate_finds_no_caller_for_a_token_signed_by_another_key() -> None:
    token = _tokens().issue(client_id="cli_a", tenant_id="t1", scopes=frozenset())
    assert Authenticate(_tokens())(_request(_bearer(token))) is None


def test_authenticate_finds_no_caller_for_a_token_of_another_audience() -> None:
    kid, pem, _ = new_signing_key()
    key = load_key(kid, pem, time.time())
    token = _tokens("elsewhere", key).issue(client_id="cli_a", tenant_id="t1", scopes=frozenset())
    assert Authenticate(_tokens("paystream", key))(_request(_bearer(token))) is None


def test_unauthorized_is_a_401_problem_with_a_bearer_challenge() -> None:
    response = unauthorized()
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert response.headers["content-type"] == "application/problem+json"
    assert orjson.loads(bytes(response.body))["code"] == "unauthorized"


def test_insufficient_scope_is_a_403_problem_naming_the_scope() -> None:
    response = insufficient_scope("cards:write")
    body = orjson.loads(bytes(response.body))
    assert response.status_code == 403
    assert body["code"] == "insufficient_scope"
    assert "cards:write" in body["detail"]


# -- forward: reading the request --------------------------------------------------------


class _Thing(BaseModel):
    name: str


async def test_read_body_returns_a_body_that_fits_its_schema() -> None:
    assert await read_body(_request(body=b'{"name": "a"}'), _Thing, True) == {"name": "a"}


async def test_read_body_of_an_empty_optional_body_is_an_empty_object() -> None:
    assert await read_body(_request(body=b"  "), _Thing, False) == {}


@pytest.mark.parametrize(("headers", "body", "status", "code"), [
    ({}, b"", 400, "body_required"),
    ({"Content-Type": "text/plain"}, b'{"name": "a"}', 415, "unsupported_media_type"),
    ({}, b'{"name": ', 400, "malformed_json"),
    ({}, b'{"name": "a", "x": ' + b"[" * 20 + b"]" * 20 + b"}", 400, "json_too_deep"),
    ({}, b"x" * (64 * 1024 + 1), 413, "payload_too_large"),
])
async def test_read_body_refuses_what_cannot_be_parsed(
    headers: dict[str, str], body: bytes, status: int, code: str
) -> None:
    with pytest.raises(ApiError) as caught:
        await read_body(_request(headers, body), _Thing, True)
    assert (caught.value.status, caught.value.code) == (status, code)


@pytest.mark.parametrize(("body", "loc"), [
    (b"[1]", ("body",)),
    (b'{"name": 3}', ("name",)),  # pydantic's own loc, as the validation problem receives it
    (b'{"name": "a\\u0000b"}', ("body", "name")),
])
async def test_read_body_refuses_a_body_that_does_not_fit_as_invalid(body: bytes, loc: tuple[str, ...]) -> None:
    with pytest.raises(Invalid) as caught:
        await read_body(_request(body=body), _Thing, True)
    assert tuple(caught.value.errors[0]["loc"]) == loc


def test_nul_in_params_names_the_path_parameter_and_query_key_that_hold_u0000() -> None:
    request = _request(query="ok=1&q=a%00b", path_params={"id": "x\x00", "other": "fine"})
    assert [e["loc"] for e in nul_in_params(request)] == [("path", "id"), ("query", "q")]


def test_nul_in_params_is_empty_for_clean_params() -> None:
    assert nul_in_params(_request(query="a=1", path_params={"id": "pay_1"})) == []


# -- idempotency: the key itself and what is kept ----------------------------------------


def test_key_refused_asks_for_a_key_only_where_one_is_required() -> None:
    required = key_refused(None, required=True)
    assert required is not None and required.status_code == 400
    assert orjson.loads(bytes(required.body))["code"] == "idempotency_key_required"
    assert key_refused(None, required=False) is None


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "a\tb"])
def test_key_refused_refuses_a_malformed_key(key: str) -> None:
    refused = key_refused(key, required=False)
    assert refused is not None and refused.status_code == 400
    assert orjson.loads(bytes(refused.body))["code"] == "invalid_idempotency_key"


def test_key_refused_lets_a_well_formed_key_through() -> None:
    assert key_refused("order-42", required=True) is None


def test_a_created_client_is_kept_without_its_secret_and_replayed_as_kept() -> None:
    created = orjson.dumps({"client_id": "cli_1", "client_secret": "pss_x", "name": "n"})
    kept = SHOWN_AS_STORED.stored(created)
    assert orjson.loads(kept) == {"client_id": "cli_1", "client_secret": None, "name": "n"}
    assert SHOWN_AS_STORED.replayed(kept) == kept == without_secret(created)
