"""Seed 001 on a whole stack: fraud's decisions slow to 4 s (the game-day fault), and the
screening deadline (2 s) is what keeps payments from piling up in ``processing``.

With the deadline on, every payment goes to review with its funds held, and once the
fault is cleared fraud re-screens them and they succeed, each posted once although fraud's
own late approval reached the ledger too. With the deadline off, the same payments sit in
``processing`` for the whole delay.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from paystream.ledger.verify import verify_database
from paystream.tools.client import ApiError, FraudFaults, PaystreamClient
from paystream.tools.invariants import check_invariants

from .conftest import SHARED_ENV
from .stack import UpProcess, running_stack
from .test_ledger_features import _balance, _funded

DEADLINE = 2.0
DELAY_MS = 4_000
PAYMENTS = 20
AMOUNT = 1_000  # far below the review band: the rules approve it
FUNDS = 50_000


async def _statuses(client: PaystreamClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    found = await asyncio.gather(*(client.get_payment(i) for i in ids))
    return {p["id"]: p for p in found}


async def _all_reach(client: PaystreamClient, ids: list[str], status: str, within: float) -> float:
    """Poll until every payment shows ``status``; returns when (monotonic)."""
    deadline = time.monotonic() + within
    while True:
        payments = await _statuses(client, ids)
        if all(p["status"] == status for p in payments.values()):
            return time.monotonic()
        left = {i: p["status"] for i, p in payments.items() if p["status"] != status}
        assert time.monotonic() < deadline, f"not {status} after {within}s: {left}"
        await asyncio.sleep(0.1)


async def _eventually(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def _setup(client: PaystreamClient, stack: UpProcess) -> tuple[list[str], str, FraudFaults]:
    payers = [await _funded(client, FUNDS) for _ in range(2)]
    payee = (await client.create_account("USD"))["id"]
    faults = FraudFaults.for_home(stack.home)
    assert await faults.set(decision_delay_ms=DELAY_MS) == {"decision_delay_ms": DELAY_MS}
    assert await faults.get() == {"decision_delay_ms": DELAY_MS}
    return payers, str(payee), faults


async def _pay_all(client: PaystreamClient, payers: list[str], payee: str) -> list[str]:
    created = await asyncio.gather(*(
        client.pay(payers[i % len(payers)], payee, AMOUNT, key=uuid.uuid4().hex)
        for i in range(PAYMENTS)
    ))
    return [p["id"] for p in created]


async def _only_operators_reach_the_fault_switch(
    stack: UpProcess, client: PaystreamClient, faults: FraudFaults
) -> None:
    assert stack.info is not None
    async with httpx.AsyncClient(timeout=10) as http:
        url = f"{stack.info.operations_urls['fraud']}/internal/faults"
        assert (await http.put(url, json={"decision_delay_ms": 1})).status_code == 401
    assert (await client.request("PUT", "/internal/faults",
                                 json_body={"decision_delay_ms": 1})).status_code == 404
    with pytest.raises(ApiError) as refused:
        await faults.set(decision_delay_ms=-1)
    assert refused.value.status == 422
    assert await faults.get() == {"decision_delay_ms": DELAY_MS}


async def _decided_by_fraud(stack: UpProcess, payment_ids: list[str]) -> list[str]:
    """Fraud's answer to the deadline worker's question: which of these has it decided?"""
    assert stack.info is not None
    token = json.loads((stack.home / "secrets.json").read_text())["internal_token"]
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{stack.info.operations_urls['fraud']}/internal/decisions/lookup",
            json={"payment_ids": payment_ids},
            headers={"x-paystream-internal-token": token, "x-paystream-tenant": "system"},
        )
    assert response.status_code == 200, response.text
    return list(response.json()["decided"])


def _ignored_late_decisions(stack: UpProcess, ids: set[str]) -> set[str]:
    """Payments whose automatic ``fraud.approved`` reached the ledger after it had decided."""
    seen = set()
    for line in (stack.home / "logs" / "ledger.log").read_text(errors="replace").splitlines():
        if '"ledger_order_already_decided"' not in line:
            continue
        record = json.loads(line)
        if record.get("signal") == "fraud.approved" and record.get("payment_id") in ids:
            seen.add(record["payment_id"])
    return seen


async def test_the_deadline_sends_slow_screenings_to_review_held_and_rescreens_them() -> None:
    env = SHARED_ENV | {
        "PAYSTREAM_SCREENING_DEADLINE_SECONDS": str(DEADLINE),
        "PAYSTREAM_FRAUD_RESCREEN_BACKOFF_CAP_SECONDS": "2",
    }
    async with running_stack(env, prefix="paystream-e2e-deadline-") as stack:
        assert stack.info is not None
        async with PaystreamClient.for_stack(stack.info, max_connections=24) as client:
            payers, payee, faults = await _setup(client, stack)
            started = time.monotonic()
            ids = await _pay_all(client, payers, payee)
            created = time.monotonic()

            in_review = await _all_reach(client, ids, "requires_review", within=DEADLINE + 3.0)
            print(f"\n{PAYMENTS} payments created in {created - started:.2f}s, all in review "
                  f"{in_review - started:.2f}s after the first was sent (deadline {DEADLINE}s, "
                  f"fraud delay {DELAY_MS} ms)")
            assert in_review - started >= DEADLINE - 0.1  # the deadline did it, not fraud

            # Funds held, not posted: exactly as a review fraud asked for holds them.
            held = PAYMENTS // len(payers) * AMOUNT

            async def holds_in_place() -> bool:
                wanted = {"posted": FUNDS, "pending": held, "available": FUNDS - held}
                for payer in payers:
                    if await _balance(client, payer) != wanted:
                        return False
                return True

            await _eventually(holds_in_place, 10, "the ledger did not hold the funds")
            assert (await _balance(client, payee))["posted"] == 0

            async def queued_for_review() -> dict[str, list[str]] | None:
                # payments hands the deadline's reviews to fraud's queue a moment after
                reviews = {r["payment_id"]: r["reasons"] for r in await client.open_reviews(limit=100)}
                return reviews if set(ids) <= set(reviews) else None

            reviews = await _eventually(queued_for_review, 10, "the reviews did not reach fraud's queue")
            assert {i: reviews[i] for i in ids} == {i: ["screening_deadline"] for i in ids}
            async with httpx.AsyncClient(timeout=10) as http:
                metrics = (await http.get(f"{stack.info.operations_urls['payments']}/metrics")).text
            assert f"paystream_screening_deadline_total {float(PAYMENTS)}" in metrics

            # The fault is cleared: fraud re-screens the reviews, the rules approve, the holds post.
            cleared = time.monotonic()
            await faults.set(decision_delay_ms=0)
            succeeded = await _all_reach(client, ids, "succeeded", within=30)
            print(f"all succeeded {succeeded - cleared:.2f}s after the fault was cleared")

            # fraud's own (late) approvals reached the ledger as well, and moved nothing.
            async def late_approvals_ignored() -> bool:
                return _ignored_late_decisions(stack, set(ids)) == set(ids)

            await _eventually(late_approvals_ignored, 30,
                              "fraud's late approvals did not all reach the ledger")
            for payer in payers:
                assert await _balance(client, payer) == {
                    "posted": FUNDS - held, "pending": 0, "available": FUNDS - held
                }
            assert (await _balance(client, payee))["posted"] == PAYMENTS * AMOUNT
            statuses = await _statuses(client, ids)
            assert {p["status"] for p in statuses.values()} == {"succeeded"}
            assert await _decided_by_fraud(stack, [*ids, "pay_unknown"]) == sorted(ids)

        report = await check_invariants(stack.info.postgres_url, settled=True)
        assert report.ok, str(report)
        verified = await verify_database(stack.info.postgres_url, "ledger")
        assert verified.ok, str(verified)
        conn = await asyncpg.connect(stack.info.postgres_url)
        try:
            posts = await conn.fetchval(
                "SELECT count(*) FROM ledger.transfers WHERE external_ref = ANY($1::text[]) "
                "AND phase IN ('posted', 'post_pending')", ids)
            resolved = await conn.fetchval(
                "SELECT count(*) FROM fraud.reviews WHERE payment_id = ANY($1::text[]) "
                "AND status = 'approved' AND decided_by = 'rescreen'", ids)
        finally:
            await conn.close()
        assert (posts, resolved) == (PAYMENTS, PAYMENTS)


async def test_without_the_deadline_slow_screenings_leave_payments_in_processing() -> None:
    env = SHARED_ENV | {"PAYSTREAM_SCREENING_DEADLINE_SECONDS": "0"}
    async with running_stack(env, prefix="paystream-e2e-nodeadline-") as stack:
        assert stack.info is not None
        async with PaystreamClient.for_stack(stack.info, max_connections=24) as client:
            payers, payee, faults = await _setup(client, stack)
            await _only_operators_reach_the_fault_switch(stack, client, faults)
            started = time.monotonic()
            ids = await _pay_all(client, payers, payee)

            # Past the point where the deadline sends every one to review (2.6 s in the test
            # above): all are still waiting for fraud, funds neither held nor moved.
            while time.monotonic() < started + DEADLINE + 1.0:
                statuses = await _statuses(client, ids)
                assert {p["status"] for p in statuses.values()} == {"processing"}
                await asyncio.sleep(0.2)
            for payer in payers:
                assert await _balance(client, payer) == {"posted": FUNDS, "pending": 0,
                                                         "available": FUNDS}
            stuck = time.monotonic() - started
            print(f"\nwithout the deadline: {PAYMENTS} payments still processing {stuck:.2f}s "
                  f"after the first was sent (fraud delay {DELAY_MS} ms)")

            cleared = await asyncio.to_thread(subprocess.run, [
                sys.executable, "-m", "paystream", "faults", "--home", str(stack.home),
                "--decision-delay-ms", "0",
            ], capture_output=True, text=True, timeout=60)  # the operator's way
            assert cleared.returncode == 0, cleared.stderr
            assert json.loads(cleared.stdout) == {"decision_delay_ms": 0}
            done = await _all_reach(client, ids, "succeeded", within=30)
            print(f"they succeeded {done - started:.2f}s after the first was sent")
            assert done - started >= DELAY_MS / 1000 - 0.5  # they waited for fraud's delay

        report = await check_invariants(stack.info.postgres_url, settled=True)
        assert report.ok, str(report)
