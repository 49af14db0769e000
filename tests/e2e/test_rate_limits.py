"""Rate limits through the public API: 429 with Retry-After and RateLimit-* headers, and
the documented policy when Redis is unreachable (sign-in fails closed, money routes go on
under a per-process limit, and money still moves correctly)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from paystream.tools.client import PaystreamClient
from paystream.tools.invariants import check_invariants

from .stack import UpProcess, running_stack

LIMITS = {"auth": "6/60s", "money": "8/60s", "write": "100/60s", "read": "5/60s"}


@pytest.fixture(scope="module")
async def limited() -> AsyncIterator[UpProcess]:
    env = {"PAYSTREAM_RATE_LIMITS": json.dumps(LIMITS)}
    async with running_stack(env, prefix="paystream-e2e-limits-") as up:
        yield up


def _token_form(up: UpProcess) -> dict[str, str]:
    assert up.info is not None
    return {"grant_type": "client_credentials", "client_id": up.info.client_id,
            "client_secret": up.info.client_secret}


async def test_reads_past_the_limit_get_429_with_rate_limit_headers(limited: UpProcess) -> None:
    assert limited.info is not None
    async with PaystreamClient.for_stack(limited.info, max_connections=8) as client:
        account = await client.create_account("USD")
        answers = await asyncio.gather(
            *(client.request("GET", f"/v1/accounts/{account['id']}") for _ in range(12))
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 5 + [429] * 7
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Limit"] == "5"
    assert refused.headers["RateLimit-Remaining"] == "0"


async def test_sign_in_attempts_past_the_limit_get_429(limited: UpProcess) -> None:
    assert limited.info is not None
    wrong = {**_token_form(limited), "client_secret": "not-the-secret"}
    async with httpx.AsyncClient(base_url=limited.info.gateway_url, timeout=10) as http:
        answers = [await http.post("/oauth/token", data=wrong) for _ in range(10)]
    statuses = [a.status_code for a in answers]
    # One sign-in already happened in the test above; failures count like any attempt.
    assert statuses.count(429) >= 5 and set(statuses) <= {401, 429}
    assert "Retry-After" in answers[-1].headers


@pytest.fixture
async def default_limits() -> AsyncIterator[UpProcess]:
    async with running_stack(prefix="paystream-e2e-noredis-") as up:
        yield up


async def test_without_redis_sign_in_fails_closed_and_payments_go_on(default_limits: UpProcess) -> None:
    limited = default_limits
    assert limited.info is not None
    redis_pid = limited.pids()["redis"]
    async with PaystreamClient.for_stack(limited.info, max_connections=8) as client:
        await client.token()  # signed in before Redis goes away
        account = await client.create_account("USD")
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            async with httpx.AsyncClient(base_url=limited.info.gateway_url, timeout=10) as http:
                sign_in = await http.post("/oauth/token", data=_token_form(limited))
            deposit = await client.request(
                "POST", "/v1/deposits", idempotency_key=uuid.uuid4().hex,
                json_body={"account_id": account["id"], "amount": 5_000, "currency": "USD"},
            )
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        assert sign_in.status_code == 503
        assert sign_in.json()["code"] == "rate_limiter_unavailable"
        assert deposit.status_code == 202, deposit.text
        # Fraud could not count velocity either, so the deposit went to review; once Redis is
        # back fraud screens it again by itself (no human needed) and it goes through.
        deadline = time.monotonic() + 30
        while (payment := await client.get_payment(deposit.json()["id"]))["status"] != "succeeded":
            assert time.monotonic() < deadline, payment
            await asyncio.sleep(0.2)
        assert (await client.get_account(account["id"]))["balance"]["posted"] == 5_000
    report = await check_invariants(limited.info.postgres_url)
    assert report.ok, str(report)
