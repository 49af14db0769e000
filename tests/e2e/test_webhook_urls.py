"""Registering a webhook endpoint on a stack that allows public receivers only (the default)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from paystream.tools.client import PaystreamClient

from .stack import UpProcess, running_stack

EVENTS = ["payment.succeeded"]


@pytest.fixture(scope="module")
async def public_only() -> AsyncIterator[UpProcess]:
    async with running_stack(prefix="paystream-e2e-ssrf-", allow_local_webhooks=False) as up:
        yield up


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://2130706433/hook", "http://[::ffff:127.0.0.1]/hook",
    "http://169.254.169.254/latest/meta-data/", "http://10.0.0.7/hook", "http://localhost/hook",
    "http://metadata.google.internal/", "http://user:secret@example.com/hook",
])
async def test_private_and_metadata_urls_are_refused_with_a_problem(public_only: UpProcess, url: str) -> None:
    assert public_only.info is not None
    async with PaystreamClient.for_stack(public_only.info, max_connections=4) as client:
        response = await client.request("POST", "/v1/webhook_endpoints",
                                        json_body={"url": url, "events": EVENTS})
        listed = await client.call("GET", "/v1/webhook_endpoints")
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "webhook_url_forbidden"
    assert [e for e in listed["data"] if e["url"] == url] == []


async def test_a_public_url_is_accepted(public_only: UpProcess) -> None:
    assert public_only.info is not None
    async with PaystreamClient.for_stack(public_only.info, max_connections=4) as client:
        response = await client.request("POST", "/v1/webhook_endpoints",
                                        json_body={"url": "https://hooks.example.com/paystream",
                                                   "events": EVENTS})
    assert response.status_code == 201, response.text
