"""Redis frozen under fraud: payments go to review (``velocity_unavailable``) with their
funds held, and once Redis answers again fraud screens them again by itself, so none is
left waiting for a human (before re-screening, a 15 s freeze parked 132 payments in manual
review for good). A payment the rules would review anyway stays with a human."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import asyncpg

from paystream.tools.client import PaystreamClient
from paystream.tools.invariants import check_invariants

from .conftest import SHARED_ENV
from .stack import running_stack
from .test_ledger_features import REVIEW_AMOUNT, _balance, _funded
from .test_screening_deadline import _all_reach

PAYMENTS = 10
AMOUNT = 1_000


async def test_payments_reviewed_while_redis_was_frozen_are_rescreened_when_it_is_back() -> None:
    env = SHARED_ENV | {"PAYSTREAM_FRAUD_RESCREEN_BACKOFF_CAP_SECONDS": "2"}
    async with running_stack(env, prefix="paystream-e2e-rescreen-") as stack:
        assert stack.info is not None
        redis_pid = stack.pids()["redis"]
        async with PaystreamClient.for_stack(stack.info, max_connections=16) as client:
            payer = await _funded(client, 250_000)
            payee = (await client.create_account("USD"))["id"]
            os.kill(redis_pid, signal.SIGSTOP)
            try:
                created = await asyncio.gather(*(
                    client.pay(payer, payee, AMOUNT, key=uuid.uuid4().hex) for _ in range(PAYMENTS)
                ))
                risky = await client.pay(payer, payee, REVIEW_AMOUNT, key=uuid.uuid4().hex)
                ids = [p["id"] for p in created]
                await _all_reach(client, [*ids, risky["id"]], "requires_review", within=15)
                reviews = {r["payment_id"]: r for r in await client.open_reviews(limit=100)}
                assert {reviews[i]["reasons"][0] for i in ids} == {"velocity_unavailable"}
                held = PAYMENTS * AMOUNT + REVIEW_AMOUNT
                assert (await _balance(client, payer))["pending"] == held
                await asyncio.sleep(2.0)  # re-screens while Redis is away change nothing
                assert {(await client.get_payment(i))["status"] for i in ids} == {"requires_review"}
            finally:
                os.kill(redis_pid, signal.SIGCONT)
            thawed = time.monotonic()

            done = await _all_reach(client, ids, "succeeded", within=30)
            print(f"\n{PAYMENTS} payments re-screened and succeeded {done - thawed:.2f}s after "
                  f"Redis was back")
            assert (await client.get_payment(risky["id"]))["status"] == "requires_review"
            assert (await _balance(client, payer)) == {
                "posted": 250_000 - PAYMENTS * AMOUNT, "pending": REVIEW_AMOUNT,
                "available": 250_000 - PAYMENTS * AMOUNT - REVIEW_AMOUNT,
            }
            [still_open] = [r for r in await client.open_reviews(limit=100)
                            if r["payment_id"] == risky["id"]]
            assert "amount_in_review_band" in still_open["reasons"]

        conn = await asyncpg.connect(stack.info.postgres_url)
        try:
            rescreened = await conn.fetchval(
                "SELECT count(*) FROM fraud.reviews WHERE payment_id = ANY($1::text[]) "
                "AND status = 'approved' AND decided_by = 'rescreen'", ids)
        finally:
            await conn.close()
        assert rescreened == PAYMENTS
        report = await check_invariants(stack.info.postgres_url, settled=False)
        assert report.ok, str(report)
