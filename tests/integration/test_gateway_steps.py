"""The gateway's stateful request-path steps, each driven alone against a real server:
`RateLimit` on Redis, `Idempotency` and `Audit` on a migrated gateway schema in PostgreSQL;
then the order in which `Pipeline` composes them, up to (never into) forwarding."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response

from paystream.gateway.audit import Audit
from paystream.gateway.authenticate import Authenticate
from paystream.gateway.domain import Principal
from paystream.gateway.edge import ApiError
from paystream.gateway.forward import Forward
from paystream.gateway.idempotency import Idempotency, Keep
from paystream.gateway.identity.keys import load_key, new_signing_key
from paystream.gateway.identity.tokens import TokenService
from paystream.gateway.pipeline import Pipeline
from paystream.gateway.rate_limit import Limit, RateLimit, RateLimiter
from paystream.gateway.rate_limit import redis_client as limiter_redis
from paystream.gateway.routes import ROUTES
from paystream.stack.ports import free_port

PRINCIPAL = Principal(client_id="cli_steps", tenant_id="t1", scopes=frozenset({"payments:write"}),
                      user_id=None, expires_at=2_000_000_000)


def _request(key: str | None = None) -> Request:
    headers = [(b"idempotency-key", key.encode())] if key is not None else []
    request = Request({"type": "http", "method": "POST", "path": "/v1/payments", "query_string": b"",
                       "headers": headers, "client": ("203.0.113.9", 5000)})
    request.state.principal = PRINCIPAL
    return request


class _Produce:
    """A request's effect: counts its runs, answers ``status`` with a fresh body each time."""

    def __init__(self, status: int = 201) -> None:
        self.status = status
        self.runs = 0

    async def __call__(self) -> Response:
        self.runs += 1
        return Response(orjson.dumps({"id": f"pay_{self.runs}"}), status_code=self.status,
                        media_type="application/json", headers={"x-correlation-id": "corr"})


@pytest.fixture
async def gateway(make_schema: Any) -> Any:
    return await make_schema("gateway")


async def _audit_rows(gateway: Any) -> list[Any]:
    async with gateway.pool.acquire() as conn:
        return list(await conn.fetch("SELECT actor, action, outcome, object_id, correlation_id FROM audit_log "
                                     "ORDER BY id"))


# -- rate_limit --------------------------------------------------------------------------


async def test_rate_limit_lets_a_request_within_the_limit_go_on(redis_client: Any, uid: str) -> None:
    step = RateLimit(RateLimiter(redis_client, {"write": Limit.parse("2/60s")}, fail_closed=frozenset(),
                                 prefix=uid))
    assert await step("write", _request(), "cli_steps") is None


async def test_rate_limit_answers_429_with_retry_after_once_the_limit_is_spent(redis_client: Any, uid: str) -> None:
    step = RateLimit(RateLimiter(redis_client, {"write": Limit.parse("2/60s")}, fail_closed=frozenset(),
                                 prefix=uid))
    answers = [await step("write", _request(), "cli_steps") for _ in range(3)]
    assert answers[:2] == [None, None]
    refused = answers[2]
    assert refused is not None and refused.status_code == 429
    assert orjson.loads(bytes(refused.body))["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) > 0


async def test_rate_limit_charges_the_address_even_without_a_client(redis_client: Any, uid: str) -> None:
    step = RateLimit(RateLimiter(redis_client, {"auth": Limit.parse("1/60s")}, fail_closed=frozenset(),
                                 prefix=uid))
    assert await step("auth", _request(), None) is None
    refused = await step("auth", _request(), "cli_other")  # another client, the same address
    assert refused is not None and refused.status_code == 429


async def test_rate_limit_without_a_limiter_lets_every_request_go_on() -> None:
    step = RateLimit(None)
    assert [await step("write", _request(), "cli_steps") for _ in range(5)] == [None] * 5


async def test_rate_limit_fails_closed_with_503_when_redis_cannot_answer(uid: str) -> None:
    client = limiter_redis(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    try:
        step = RateLimit(RateLimiter(client, {"auth": Limit.parse("100/60s")}, fail_closed=frozenset({"auth"}),
                                     prefix=uid))
        refused = await step("auth", _request(), "cli_steps")
    finally:
        await client.aclose()
    assert refused is not None and refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert orjson.loads(bytes(refused.body))["code"] == "rate_limiter_unavailable"


# -- idempotency -------------------------------------------------------------------------


async def test_idempotency_runs_a_new_key_once_and_replays_its_answer(gateway: Any) -> None:
    step, produce = Idempotency(gateway.pool), _Produce()
    first = await step.run(_request("k1"), PRINCIPAL, "k1", "fp", "POST /v1/payments", produce, "c1")
    again = await step.run(_request("k1"), PRINCIPAL, "k1", "fp", "POST /v1/payments", produce, "c2")
    assert produce.runs == 1
    assert (again.status_code, bytes(again.body)) == (first.status_code, bytes(first.body))
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-correlation-id"] == "c2"


async def test_idempotency_refuses_the_same_key_for_another_request_with_422(gateway: Any) -> None:
    step, produce = Idempotency(gateway.pool), _Produce()
    await step.run(_request("k1"), PRINCIPAL, "k1", "fp-a", "POST /v1/payments", produce, "c1")
    other = await step.run(_request("k1"), PRINCIPAL, "k1", "fp-b", "POST /v1/payments", produce, "c1")
    assert other.status_code == 422
    assert orjson.loads(bytes(other.body))["code"] == "idempotency_key_reused"
    assert produce.runs == 1


async def test_idempotency_answers_409_while_the_first_request_runs(gateway: Any) -> None:
    step = Idempotency(gateway.pool)
    answers: list[Response] = []

    async def produce_while_retried() -> Response:
        answers.append(await step.run(_request("k1"), PRINCIPAL, "k1", "fp", "POST /v1/payments",
                                      _Produce(), "c1"))
        return await _Produce()()

    await step.run(_request("k1"), PRINCIPAL, "k1", "fp", "POST /v1/payments", produce_while_retried, "c1")
    assert answers[0].status_code == 409
    assert orjson.loads(bytes(answers[0].body))["code"] == "idempotency_key_in_use"


async def test_idempotency_abandons_the_key_of_a_5xx_so_a_retry_runs_again(gateway: Any) -> None:
    step, failing, working = Idempotency(gateway.pool), _Produce(503), _Produce(201)
    first = await step.run(_request("k1"), PRINCIPAL, "k1", "fp", "POST /v1/payments", failing, "c1")
    retry = await step.run(_request("k1"), PRINCIPAL, "k1", "fp", "POST /v1/payments", working, "c1")
    assert (first.status_code, retry.status_code) == (503, 201)
    assert working.runs == 1 and "idempotent-replayed" not in retry.headers


async def test_idempotency_abandons_the_key_of_a_request_that_raises(gateway: Any) -> None:
    step, working = Idempotency(gateway.pool), _Produce(201)

    async def raising() -> Response:
        raise RuntimeError("upstream fell over")

    with pytest.raises(RuntimeError):
        await step.run(_request("k1"), PRINCIPAL, "k1", "fp", "POST /v1/payments", raising, "c1")
    retry = await step.run(_request("k1"), PRINCIPAL, "k1", "fp", "POST /v1/payments", working, "c1")
    assert retry.status_code == 201 and working.runs == 1


async def test_idempotency_stores_and_replays_through_keep(gateway: Any) -> None:
    keep = Keep(stored=lambda body: body.upper(), replayed=lambda body: body.lower())
    step = Idempotency(gateway.pool)
    await step.run(_request("k1"), PRINCIPAL, "k1", "fp", "POST /v1/payments", _Produce(), "c1", keep=keep)
    async with gateway.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT response_body FROM idempotency_keys WHERE key = 'k1'")
    again = await step.run(_request("k1"), PRINCIPAL, "k1", "fp", "POST /v1/payments", _Produce(), "c1",
                           keep=keep)
    assert bytes(stored) == b'{"ID":"PAY_1"}'
    assert bytes(again.body) == b'{"id":"pay_1"}'


async def test_idempotency_writes_the_audit_record_with_the_stored_answer(gateway: Any) -> None:
    request = _request("k1")
    await Idempotency(gateway.pool).run(request, PRINCIPAL, "k1", "fp", "POST /v1/payments", _Produce(), "c1")
    rows = await _audit_rows(gateway)
    assert [(r["actor"], r["action"], r["outcome"], r["object_id"]) for r in rows] == [
        ("cli_steps", "POST /v1/payments", 201, "pay_1")]
    assert request.state.audited is True


# -- audit -------------------------------------------------------------------------------


async def test_audited_appends_one_record_of_the_answer(gateway: Any) -> None:
    async def call(request: Request) -> Response:
        return await _Produce(202)()

    response = await Audit(gateway.pool).audited("POST /v1/payments", _request(), call)
    rows = await _audit_rows(gateway)
    assert response.status_code == 202
    assert [(r["action"], r["outcome"], r["object_id"], r["correlation_id"]) for r in rows] == [
        ("POST /v1/payments", 202, "pay_1", "corr")]


async def test_audited_records_the_status_of_a_domain_error_and_reraises_it(gateway: Any) -> None:
    async def call(request: Request) -> Response:
        raise ApiError(404, "not_found", "Not found", "no such payment")

    with pytest.raises(ApiError):
        await Audit(gateway.pool).audited("POST /v1/payments", _request(), call)
    assert [(r["outcome"], r["object_id"]) for r in await _audit_rows(gateway)] == [(404, None)]


async def test_audited_adds_nothing_when_idempotency_already_wrote_the_record(gateway: Any) -> None:
    step = Idempotency(gateway.pool)

    async def call(request: Request) -> Response:
        return await step.run(request, PRINCIPAL, "k1", "fp", "POST /v1/payments", _Produce(), "c1")

    await Audit(gateway.pool).audited("POST /v1/payments", _request("k1"), call)
    assert len(await _audit_rows(gateway)) == 1


# -- the composed path: its order, before anything is forwarded --------------------------


def _pipeline(gateway: Any, redis_client: Any, uid: str, tokens: TokenService, money: str = "100/60s") -> Pipeline:
    """No service to forward to: a request that got as far as forwarding would fail the test."""
    limiter = RateLimiter(redis_client, {"money": Limit.parse(money)}, fail_closed=frozenset(), prefix=uid)
    return Pipeline(authenticate=Authenticate(tokens), rate_limit=RateLimit(limiter),
                    idempotency=Idempotency(gateway.pool), forward=Forward({}), audit=Audit(gateway.pool))


def _tokens() -> TokenService:
    tokens = TokenService(issuer="https://issuer.test", audience="paystream", ttl_seconds=300)
    kid, pem, _ = new_signing_key()
    tokens.set_keys([load_key(kid, pem, time.time())])
    return tokens


def _payment_request(token: str | None, **headers: str) -> Request:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    if token is not None:
        raw.append((b"authorization", f"Bearer {token}".encode()))
    body = b'{"amount": 1}'

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/v1/payments", "query_string": b"",
                    "headers": raw, "client": ("203.0.113.9", 5000), "path_params": {}}, receive)


PAYMENTS = next(r for r in ROUTES if (r.method, r.path) == ("POST", "/v1/payments"))


async def test_the_pipeline_answers_401_without_a_token(gateway: Any, redis_client: Any, uid: str) -> None:
    response = await _pipeline(gateway, redis_client, uid, _tokens()).handle(PAYMENTS, _payment_request(None))
    assert response.status_code == 401


async def test_the_pipeline_rate_limits_before_it_authenticates(gateway: Any, redis_client: Any, uid: str) -> None:
    pipeline = _pipeline(gateway, redis_client, uid, _tokens(), money="1/60s")
    first = await pipeline.handle(PAYMENTS, _payment_request(None))
    second = await pipeline.handle(PAYMENTS, _payment_request(None))
    assert (first.status_code, second.status_code) == (401, 429)


async def test_the_pipeline_answers_403_for_a_token_without_the_route_scope(
    gateway: Any, redis_client: Any, uid: str
) -> None:
    tokens = _tokens()
    token = tokens.issue(client_id="cli_a", tenant_id="t1", scopes=frozenset({"payments:read"}))
    response = await _pipeline(gateway, redis_client, uid, tokens).handle(PAYMENTS, _payment_request(token))
    assert response.status_code == 403
    assert orjson.loads(bytes(response.body))["code"] == "insufficient_scope"


async def test_the_pipeline_refuses_a_body_that_does_not_fit_before_the_key_is_looked_at(
    gateway: Any, redis_client: Any, uid: str
) -> None:
    tokens = _tokens()
    token = tokens.issue(client_id="cli_a", tenant_id="t1", scopes=frozenset({"payments:write"}))
    response = await _pipeline(gateway, redis_client, uid, tokens).handle(PAYMENTS, _payment_request(token))
    assert response.status_code == 422  # {"amount": 1} is not a payment, and no key was sent


async def test_the_pipeline_answers_an_unauthenticated_request_without_a_correlation_id(
    gateway: Any, redis_client: Any, uid: str
) -> None:
    response = await _pipeline(gateway, redis_client, uid, _tokens()).handle(PAYMENTS, _payment_request(None))
    assert "x-correlation-id" not in response.headers
