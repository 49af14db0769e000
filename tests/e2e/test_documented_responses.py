"""Responses carry only documented fields: every object the API returns validates against
its public schema (which forbids extra fields) and has no field the schema does not name."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict

from paystream.contracts.api import Account, Entry, Payment, PaymentEvent, Review, WebhookEndpoint
from paystream.tools.client import PaystreamClient

from .stack import UpProcess


def _strictly(model: type[BaseModel], data: dict[str, Any]) -> None:
    extra = set(data) - set(model.model_fields)
    assert extra == set(), f"{model.__name__} carries undocumented fields {extra}"
    strict = type(f"Strict{model.__name__}", (model,), {"model_config": ConfigDict(extra="forbid")})
    strict.model_validate(data)


async def test_every_response_object_is_exactly_its_documented_schema(
    stack: UpProcess, client: PaystreamClient
) -> None:
    account = await client.create_account("USD", metadata={"k": "v"})
    _strictly(Account, account)
    _strictly(Account, await client.get_account(account["id"]))
    deposit = await client.deposit(account["id"], 150_000)  # in the review band: a review too
    _strictly(Payment, deposit)
    reviews = [r for r in await client.open_reviews() if r["payment_id"] == deposit["id"]]
    for _ in range(100):  # up to ~10 s
        if reviews:
            break
        await asyncio.sleep(0.1)
        reviews = [r for r in await client.open_reviews() if r["payment_id"] == deposit["id"]]
    assert reviews, "the deposit never reached review"
    _strictly(Review, reviews[0])
    _strictly(Review, await client.decide_review(reviews[0]["id"], approve=True))
    payment = await client.get_payment(deposit["id"])
    _strictly(Payment, payment)
    for event in (await client.call("GET", f"/v1/payments/{deposit['id']}/events"))["data"]:
        _strictly(PaymentEvent, event)
    for listed in (await client.call("GET", "/v1/payments", params={"account_id": account["id"]}))["data"]:
        _strictly(Payment, listed)
    for _ in range(100):  # up to ~10 s
        entries = (await client.call("GET", f"/v1/accounts/{account['id']}/entries"))["data"]
        if entries:
            break
        await asyncio.sleep(0.1)
    assert entries, "the approved deposit was never posted"
    for entry in entries:
        _strictly(Entry, entry)
    endpoint = await client.create_webhook_endpoint("http://127.0.0.1:9/documented", ["payment.succeeded"])
    _strictly(WebhookEndpoint, endpoint)
    _strictly(WebhookEndpoint, await client.call("GET", f"/v1/webhook_endpoints/{endpoint['id']}"))
    await client.request("DELETE", f"/v1/webhook_endpoints/{endpoint['id']}",
                         idempotency_key=uuid.uuid4().hex)
