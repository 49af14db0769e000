"""A review nobody decides: the ledger voids its hold when the hold times out, the payment
fails with ``review_expired``, and a late approval moves nothing."""

from __future__ import annotations

import asyncio
import uuid

from paystream.tools.client import PaystreamClient
from paystream.tools.invariants import check_invariants

from .conftest import SHARED_ENV
from .stack import running_stack
from .test_ledger_features import REVIEW_AMOUNT, _balance, _funded, _review_of, _status


async def test_an_undecided_review_expires_its_hold_and_fails_the_payment() -> None:
    env = SHARED_ENV | {"PAYSTREAM_LEDGER_REVIEW_HOLD_SECONDS": "2"}
    async with running_stack(env, prefix="paystream-e2e-expiry-") as stack:
        assert stack.info is not None
        async with PaystreamClient.for_stack(stack.info) as client:
            payer = await _funded(client, 250_000)
            payee = (await client.create_account("USD"))["id"]
            held = await client.pay(payer, payee, REVIEW_AMOUNT, key=uuid.uuid4().hex)
            await _status(client, held["id"], "requires_review")
            review = await _review_of(client, held["id"])
            failed = await _status(client, held["id"], "failed")
            assert failed["failure_code"] == "review_expired"
            assert await _balance(client, payer) == {"posted": 250_000, "pending": 0, "available": 250_000}

            await client.decide_review(review, approve=True)  # too late: nothing moves
            # The approval's event reaches the ledger within milliseconds; give it ample time
            # to do the wrong thing if it were going to, then look.
            await asyncio.sleep(2.0)
            assert (await client.get_payment(held["id"]))["status"] == "failed"
            assert (await _balance(client, payee))["posted"] == 0
            report = await check_invariants(stack.info.postgres_url, settled=True)
            assert report.ok, str(report)
