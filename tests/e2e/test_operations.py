"""Operations: every service answers /healthz, /readyz and /metrics, and its JSON log lines
carry the payment id and the correlation id the client sent."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from paystream.contracts.topology import SERVICES
from paystream.tools.client import PaystreamClient

from .stack import UpProcess


@pytest.mark.parametrize("service", SERVICES)
async def test_every_service_is_healthy_ready_and_exports_metrics(stack: UpProcess, service: str) -> None:
    assert stack.info is not None
    base = stack.info.operations_urls[service]
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        health = await http.get("/healthz")
        ready = await http.get("/readyz")
        metrics = await http.get("/metrics")
    assert health.status_code == 200
    assert ready.status_code == 200, ready.text
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "paystream_" in metrics.text


async def test_the_gateways_public_port_serves_no_readiness_or_metrics_and_its_operations_port_no_api(
    stack: UpProcess,
) -> None:
    assert stack.info is not None
    public, operations = stack.info.gateway_url, stack.info.operations_urls["gateway"]
    assert public != operations
    async with httpx.AsyncClient(timeout=5) as http:
        answers = {
            (where, path): await http.get(f"{base}{path}")
            for where, base in (("public", public), ("operations", operations))
            for path in ("/healthz", "/readyz", "/metrics", "/.well-known/jwks.json")
        }
    served = {key: response.status_code for key, response in answers.items()}
    assert served == {
        ("public", "/healthz"): 200, ("public", "/readyz"): 404, ("public", "/metrics"): 404,
        ("public", "/.well-known/jwks.json"): 200,
        ("operations", "/healthz"): 200, ("operations", "/readyz"): 200, ("operations", "/metrics"): 200,
        ("operations", "/.well-known/jwks.json"): 404,
    }
    refused = answers[("public", "/metrics")]
    assert refused.headers["content-type"] == "application/problem+json"
    assert "paystream_" not in refused.text


def _log_lines(stack: UpProcess, service: str) -> list[dict[str, Any]]:
    lines = []
    for raw in (stack.home / "logs" / f"{service}.log").read_bytes().splitlines():
        try:
            lines.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            raise AssertionError(f"{service} wrote a line that is not JSON: {raw[:200]!r}") from None
    return lines


async def test_log_lines_of_every_service_carry_the_payment_and_correlation_ids(
    stack: UpProcess, client: PaystreamClient
) -> None:
    correlation_id = f"ops-{uuid.uuid4().hex}"
    account = await client.create_account("USD")
    response = await client.request(
        "POST", "/v1/deposits",
        json_body={"account_id": account["id"], "amount": 1_000, "currency": "USD"},
        idempotency_key=uuid.uuid4().hex, headers={"X-Correlation-Id": correlation_id},
    )
    assert response.status_code == 202
    assert response.headers["x-correlation-id"] == correlation_id
    payment_id = response.json()["id"]
    deadline = time.monotonic() + 30
    while (await client.get_payment(payment_id))["status"] != "succeeded":
        assert time.monotonic() < deadline, "the deposit did not succeed in time"
        await asyncio.sleep(0.1)

    missing: list[str] = []
    for _ in range(50):  # log lines may trail the state change by a moment
        missing = [
            service for service in SERVICES
            if not any(
                line.get("correlation_id") == correlation_id
                and payment_id in (line.get("payment_id"), line.get("object_id"))
                for line in _log_lines(stack, service)
            )
        ]
        if not missing:
            break
        await asyncio.sleep(0.1)
    assert missing == []
