"""Every served body is exactly its response model, as the gateway's OpenAPI document names it.

Which model answers which operation (and status) is read from ``/openapi.json``, built from
the route table, so a route added there is checked here without editing this file (and this
test fails until the scenario below exercises it). For each body: its keys are the model's
fields (by alias), less only a field the model itself leaves out (``exclude_if``) when absent;
``Model.model_validate`` accepts it; and the validated model dumps back to the same JSON.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from pydantic import BaseModel

from paystream.contracts import api as contracts
from paystream.tools.client import PaystreamClient

from ..integration._support import eventually
from .stack import UpProcess

REVIEW_AMOUNT = 150_000  # inside the default review band (100,000 to 500,000)
CARD = {"number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}
PASSWORD = "a long enough passphrase"
GHOST_ACCOUNT = "acc_00000000000000000000000000"

Documented = dict[tuple[str, str], dict[int, tuple[type[BaseModel], bool]]]


def documented_models(spec: dict[str, Any]) -> Documented:
    """(method, path) → status → (response model, paged) for every JSON response of the spec."""
    documented: Documented = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                for media in response.get("content", {}).values():
                    schema = media["schema"]
                    paged = "data" in schema.get("properties", {})
                    ref = schema["properties"]["data"]["items"].get("$ref") if paged else schema.get("$ref")
                    if ref is None:  # e.g. the JWK set: a standard document, not one of ours
                        continue
                    model = getattr(contracts, ref.rsplit("/", 1)[1])
                    assert issubclass(model, BaseModel), ref
                    documented.setdefault((method.upper(), path), {})[int(status)] = (model, paged)
    return documented


def _key(name: str, model: type[BaseModel]) -> str:
    info = model.model_fields[name]
    return info.serialization_alias or info.alias or name


def key_problems(model: type[BaseModel], body: dict[str, Any]) -> list[str]:
    """How ``body``'s keys differ from ``model``'s fields; a field the model leaves out of a
    dump when it has its default (``exclude_if``) may be absent."""
    keys = {_key(name, model): info for name, info in model.model_fields.items()}
    problems = [f"served but not in the model: {sorted(set(body) - set(keys))}"] if set(body) - set(keys) else []
    missing = [
        key for key, info in keys.items()
        if key not in body and not (info.exclude_if is not None and info.exclude_if(info.default))
    ]
    if missing:
        problems.append(f"in the model but not served: {sorted(missing)}")
    return problems


def round_trips(model: type[BaseModel], body: dict[str, Any]) -> bool:
    """The validated model dumps back to ``body``: through orjson as the services encode it, or
    pydantic's own JSON mode (the fraud report's route; its timestamps end in Z, not +00:00)."""
    parsed = model.model_validate(body)
    dumps = (orjson.loads(orjson.dumps(parsed.model_dump(by_alias=True))),
             parsed.model_dump(mode="json", by_alias=True))
    return any(dump == body for dump in dumps)


@dataclass
class Served:
    """The responses the scenario got, each with the operation (method, path template) it answered."""

    client: PaystreamClient
    exchanges: list[tuple[str, str, int, Any]] = field(default_factory=list)

    async def send(self, method: str, template: str, *, expect: int, path: dict[str, str] | None = None,
                   json_body: Any = None, key: str | None = None, params: dict[str, Any] | None = None,
                   form: dict[str, str] | None = None, anonymous: bool = False) -> Any:
        url = template.format(**(path or {}))
        if anonymous:
            response = await self.client.http.request(method, url, data=form)
        else:
            if method == "POST":
                key = key or uuid.uuid4().hex
            response = await self.client.request(method, url, json_body=json_body, params=params,
                                                 idempotency_key=key)
        assert response.status_code == expect, f"{method} {url}: {response.status_code} {response.text}"
        body = response.json() if response.content else None
        self.exchanges.append((method, template, response.status_code, body))
        return body


def model_for(documented: Documented, method: str, template: str, status: int) -> tuple[type[BaseModel], bool]:
    """The model documented for this answer; a 2xx the spec does not list (a transfer's replay
    answers 200 where creation is 201) has the operation's one documented success model."""
    answers = documented[(method, template)]
    if status in answers:
        return answers[status]
    successes = [answers[s] for s in answers if 200 <= s < 300]
    assert 200 <= status < 300 and len(successes) == 1, f"{method} {template} {status} is not documented"
    return successes[0]


async def _scenario(served: Served, stack: UpProcess) -> None:
    """One of every public response, through the real stack."""
    assert stack.info is not None
    send = served.send
    account = await send("POST", "/v1/accounts", expect=201, json_body={"currency": "USD", "metadata": {"k": "v"}})
    payee = await send("POST", "/v1/accounts", expect=201, json_body={"currency": "USD"})
    ids = {"account_id": account["id"]}
    await send("GET", "/v1/accounts/{account_id}", path=ids, expect=200)
    await send("GET", "/v1/accounts/{account_id}", path=ids, params={"as_of": "2026-01-01T00:00:00Z"}, expect=200)

    # Two deposits in the review band: one approved (it funds the account), one declined.
    deposits = [await send("POST", "/v1/deposits", expect=202, json_body={
        "account_id": account["id"], "amount": REVIEW_AMOUNT, "currency": "USD"}) for _ in range(2)]

    async def open_reviews() -> list[Any]:
        page = await send("GET", "/v1/reviews", params={"status": "open", "limit": 100}, expect=200)
        mine = {r["payment_id"]: r for r in page["data"]}
        return [mine[d["id"]] for d in deposits] if all(d["id"] in mine for d in deposits) else []

    approve, decline = await eventually(open_reviews, timeout=30)
    await send("POST", "/v1/reviews/{review_id}/approve", path={"review_id": approve["id"]}, expect=200)
    await send("POST", "/v1/reviews/{review_id}/decline", path={"review_id": decline["id"]},
               json_body={"note": "not ours"}, expect=200)

    async def settled(payment_id: str) -> bool:
        got = await send("GET", "/v1/payments/{payment_id}", path={"payment_id": payment_id}, expect=200)
        return got["status"] in ("succeeded", "declined", "failed")

    await eventually(lambda: settled(deposits[0]["id"]), timeout=30)
    payment = await send("POST", "/v1/payments", expect=202, json_body={
        "source_account_id": account["id"], "destination_account_id": payee["id"], "amount": 1_000,
        "currency": "USD", "description": "models", "metadata": {"order": "7"}})
    await eventually(lambda: settled(payment["id"]), timeout=30)
    pid = {"payment_id": payment["id"]}
    await send("POST", "/v1/payments/{payment_id}/refunds", path=pid, json_body={"amount": 100}, expect=202)
    await send("GET", "/v1/payments", params={"account_id": account["id"]}, expect=200)
    await send("GET", "/v1/payments/{payment_id}/events", path=pid, expect=200)
    await send("POST", "/v1/payments/{payment_id}/fraud_report", path=pid,
               json_body={"reason": "scam", "note": "reported"}, expect=201)

    async def entries() -> Any:
        page = await send("GET", "/v1/accounts/{account_id}/entries", path=ids, expect=200)
        return page["data"]

    await eventually(entries, timeout=30)

    def legs(amount: int) -> list[dict[str, Any]]:
        return [{"account_id": account["id"], "direction": "debit", "amount": amount},
                {"account_id": payee["id"], "direction": "credit", "amount": amount}]

    transfer = {"external_ref": f"models-{uuid.uuid4().hex}", "currency": "USD", "legs": legs(100),
                "metadata": {"k": "v"}}
    posted = await send("POST", "/v1/transfers", json_body=transfer, expect=201)
    await send("POST", "/v1/transfers", json_body=transfer, expect=200)  # the same ref: the first again
    await send("GET", "/v1/transfers/{transfer_id}", path={"transfer_id": posted["id"]}, expect=200)
    for verb in ("post", "void"):
        hold = await send("POST", "/v1/transfers", expect=201, json_body={
            "external_ref": f"models-{uuid.uuid4().hex}", "currency": "USD", "legs": legs(50),
            "pending": True, "timeout_seconds": 3600})
        await send("GET", "/v1/transfers/{transfer_id}", path={"transfer_id": hold["id"]}, expect=200)
        await send("POST", f"/v1/transfers/{{transfer_id}}/{verb}", path={"transfer_id": hold["id"]}, expect=200)

    endpoint = await send("POST", "/v1/webhook_endpoints", expect=201, json_body={
        "url": "http://127.0.0.1:9/models", "events": ["payment.succeeded"], "description": "models"})
    assert "secret" in endpoint  # shown once, on creation
    await send("GET", "/v1/webhook_endpoints", expect=200)
    await send("GET", "/v1/webhook_endpoints/{endpoint_id}", path={"endpoint_id": endpoint["id"]}, expect=200)
    await served.client.request("DELETE", f"/v1/webhook_endpoints/{endpoint['id']}",
                                idempotency_key=uuid.uuid4().hex)

    await send("POST", "/v1/cards", json_body=CARD, expect=201)
    email = f"models-{uuid.uuid4().hex[:8]}@example.com"
    await send("POST", "/v1/users", json_body={"email": email, "password": PASSWORD, "name": "Ada"}, expect=201)
    key = uuid.uuid4().hex
    made = {"name": f"models-{uuid.uuid4().hex[:6]}", "tenant": "default", "scopes": ["payments:read"]}
    client_made = await send("POST", "/v1/clients", json_body=made, key=key, expect=201)
    await send("POST", "/v1/clients", json_body=made, key=key, expect=201)  # a replay: client_secret null
    await send("POST", "/oauth/token", anonymous=True, expect=200, form={
        "grant_type": "client_credentials", "client_id": client_made["client_id"],
        "client_secret": client_made["client_secret"]})
    await send("POST", "/oauth/token", anonymous=True, expect=200, form={
        "grant_type": "password", "client_id": stack.info.client_id, "username": email, "password": PASSWORD})

    # Problems: one without field errors, one with them.
    await send("GET", "/v1/accounts/{account_id}", path={"account_id": GHOST_ACCOUNT}, expect=404)
    await send("POST", "/v1/accounts", json_body={"currency": "usd", "colour": "red"}, expect=422)


async def test_every_served_body_is_exactly_the_model_its_route_documents(
    stack: UpProcess, client: PaystreamClient
) -> None:
    spec = (await client.http.get("/openapi.json")).json()
    documented = documented_models(spec)
    served = Served(client)
    await _scenario(served, stack)

    failures: list[str] = []
    answered: set[tuple[str, str, int]] = set()
    problems_seen: set[bool] = set()  # whether a checked problem carried field errors
    for method, template, status, body in served.exchanges:
        model, paged = model_for(documented, method, template, status)
        answered.add((method, template, status))
        objects = body["data"] if paged else [body]
        if paged:
            assert set(body) == {"data", "has_more"}, body
        for obj in objects:
            where = f"{method} {template} {status} ({model.__name__})"
            failures += [f"{where}: {p}" for p in key_problems(model, obj)]
            if model is contracts.Problem:
                problems_seen.add("errors" in obj)
            try:
                if not round_trips(model, obj):
                    failures.append(f"{where}: does not dump back to the body it validated {obj}")
            except ValueError as exc:  # pydantic's ValidationError
                failures.append(f"{where}: does not validate: {exc}")
    assert failures == []

    unexercised = sorted(
        f"{method} {path} {status}" for (method, path), answers in documented.items()
        for status, (model, _) in answers.items()
        if 200 <= status < 300 and (method, path, status) not in answered
    )
    assert unexercised == [], "documented answers this test does not exercise yet"
    assert problems_seen == {True, False}


async def test_a_token_endpoint_error_is_exactly_the_model_it_documents(
    stack: UpProcess, client: PaystreamClient
) -> None:
    assert stack.info is not None
    spec = (await client.http.get("/openapi.json")).json()
    model, _ = model_for(documented_models(spec), "POST", "/oauth/token", 401)
    response: httpx.Response = await client.http.post("/oauth/token", data={
        "grant_type": "client_credentials", "client_id": stack.info.client_id, "client_secret": "wrong"})
    assert response.status_code == 401
    assert key_problems(model, response.json()) == []
