"""The ledger's features through the public API: review holds, refunds, exchange, transfers
with any number of legs, holds posted in part or voided, lower limits, and their errors.

Every test ends by checking that the money is where it should be; the module ends with
`paystream ledger verify` and the invariants over everything these tests did.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from paystream.ledger.verify import verify_database
from paystream.tools.client import PaystreamClient
from paystream.tools.invariants import check_invariants

from .stack import UpProcess

REVIEW_AMOUNT = 200_000  # inside the default review band (100,000 to 500,000)


async def _status(client: PaystreamClient, payment_id: str, *wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        payment = await client.get_payment(payment_id)
        if payment["status"] in wanted:
            return payment
        assert time.monotonic() < deadline, payment
        await asyncio.sleep(0.1)


async def _funded(client: PaystreamClient, amount: int, currency: str = "USD") -> str:
    """A new account holding ``amount``, deposited in parts small enough not to be reviewed."""
    account = (await client.create_account(currency))["id"]
    while amount > 0:
        part = min(amount, 90_000)
        await _status(client, (await client.deposit(account, part, currency))["id"], "succeeded")
        amount -= part
    return str(account)


async def _balance(client: PaystreamClient, account_id: str) -> dict[str, int]:
    return dict((await client.get_account(account_id))["balance"])


async def _review_of(client: PaystreamClient, payment_id: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        for review in await client.open_reviews():
            if review["payment_id"] == payment_id:
                return str(review["id"])
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def _problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code, response.text


# --------------------------------------------------------------------------- review holds


async def test_a_payment_in_review_holds_its_funds_and_approval_posts_them(
    stack: UpProcess, client: PaystreamClient
) -> None:
    payer = await _funded(client, 360_000)
    payee = (await client.create_account("USD"))["id"]
    held = await client.pay(payer, payee, REVIEW_AMOUNT)
    await _status(client, held["id"], "requires_review")
    review = await _review_of(client, held["id"])
    assert await _balance(client, payer) == {"posted": 360_000, "pending": REVIEW_AMOUNT,
                                             "available": 160_000}

    # While a human looks, the held money cannot be spent again.
    twice = await client.pay(payer, payee, 170_000)
    failed = await _status(client, twice["id"], "failed")
    assert failed["failure_code"] == "insufficient_funds"

    await client.decide_review(review, approve=True)
    await _status(client, held["id"], "succeeded")
    assert await _balance(client, payer) == {"posted": 160_000, "pending": 0, "available": 160_000}
    assert (await _balance(client, payee))["posted"] == REVIEW_AMOUNT


async def test_declining_a_review_voids_its_hold(stack: UpProcess, client: PaystreamClient) -> None:
    payer = await _funded(client, 250_000)
    payee = (await client.create_account("USD"))["id"]
    held = await client.pay(payer, payee, REVIEW_AMOUNT)
    await _status(client, held["id"], "requires_review")
    await client.decide_review(await _review_of(client, held["id"]), approve=False)
    await _status(client, held["id"], "declined")
    deadline = time.monotonic() + 30
    while (balance := await _balance(client, payer))["pending"]:
        assert time.monotonic() < deadline, balance
        await asyncio.sleep(0.1)
    assert balance == {"posted": 250_000, "pending": 0, "available": 250_000}
    assert (await _balance(client, payee))["posted"] == 0


# --------------------------------------------------------------------------- refunds


async def _refund(client: PaystreamClient, payment_id: str, amount: int | None = None,
                  key: str | None = None) -> Any:
    return await client.request(
        "POST", f"/v1/payments/{payment_id}/refunds",
        json_body={} if amount is None else {"amount": amount},
        idempotency_key=key or uuid.uuid4().hex,
    )


async def test_refunds_partial_then_full_never_more_than_was_paid(
    stack: UpProcess, client: PaystreamClient
) -> None:
    payer = await _funded(client, 10_000)
    payee = (await client.create_account("USD"))["id"]
    paid = await client.pay(payer, payee, 8_000)
    await _status(client, paid["id"], "succeeded")

    first = await _refund(client, paid["id"], 3_000, key="refund-one")
    assert first.status_code == 202, first.text
    refund = first.json()
    assert (refund["type"], refund["refund_of"], refund["amount"]) == ("refund", paid["id"], 3_000)
    assert (refund["source_account_id"], refund["destination_account_id"]) == (payee, payer)
    again = await _refund(client, paid["id"], 3_000, key="refund-one")
    assert again.json()["id"] == refund["id"] and again.headers.get("idempotent-replayed") == "true"
    done = await _status(client, refund["id"], "succeeded")
    assert (done["source_amount"], done["source_currency"]) == (None, None)  # one currency

    await _problem(await _refund(client, paid["id"], 5_001), 422, "refund_exceeds_payment")
    rest = await _refund(client, paid["id"])  # no amount: what is left
    assert rest.status_code == 202 and rest.json()["amount"] == 5_000
    await _status(client, rest.json()["id"], "succeeded")
    await _problem(await _refund(client, paid["id"], 1), 422, "refund_exceeds_payment")

    original = await client.get_payment(paid["id"])
    assert (original["status"], original["amount_refunded"]) == ("succeeded", 8_000)
    assert (await _balance(client, payer))["posted"] == 10_000
    assert (await _balance(client, payee))["posted"] == 0


async def test_a_refunded_deposit_leaves_the_account_and_goes_back_out(
    stack: UpProcess, client: PaystreamClient
) -> None:
    account = (await client.create_account("USD"))["id"]
    deposit = await client.deposit(account, 4_000)
    await _status(client, deposit["id"], "succeeded")
    response = await _refund(client, deposit["id"], 1_500)
    assert response.status_code == 202, response.text
    assert response.json()["destination_account_id"] is None
    await _status(client, response.json()["id"], "succeeded")
    assert (await _balance(client, account))["posted"] == 2_500


async def test_what_cannot_be_refunded_gets_a_clear_error(stack: UpProcess, client: PaystreamClient) -> None:
    payer = await _funded(client, 1_000)
    payee = (await client.create_account("USD"))["id"]
    failed = await client.pay(payer, payee, 5_000)
    await _status(client, failed["id"], "failed")
    await _problem(await _refund(client, failed["id"]), 422, "payment_not_refundable")
    await _problem(await _refund(client, "pay_00000000000000000000000000"), 404, "payment_not_found")
    no_key = await client.request("POST", f"/v1/payments/{failed['id']}/refunds", json_body={})
    await _problem(no_key, 400, "idempotency_key_required")
    for body in ({"amount": 0}, {"amount": "10"}, {"amount": -5}, {"reason": "x"}):
        response = await client.request("POST", f"/v1/payments/{failed['id']}/refunds",
                                        json_body=body, idempotency_key=uuid.uuid4().hex)
        assert response.status_code == 422, (body, response.text)


async def test_a_refund_the_payee_can_no_longer_cover_fails_and_moves_nothing(
    stack: UpProcess, client: PaystreamClient
) -> None:
    payer = await _funded(client, 5_000)
    payee = (await client.create_account("USD"))["id"]
    elsewhere = (await client.create_account("USD"))["id"]
    paid = await client.pay(payer, payee, 5_000)
    await _status(client, paid["id"], "succeeded")
    await _status(client, (await client.pay(payee, elsewhere, 4_000))["id"], "succeeded")
    refund = (await _refund(client, paid["id"])).json()
    failed = await _status(client, refund["id"], "failed")
    assert failed["failure_code"] == "insufficient_funds"
    assert (await client.get_payment(paid["id"]))["amount_refunded"] == 0
    assert (await _balance(client, payee))["posted"] == 1_000


# --------------------------------------------------------------------------- exchange


@pytest.mark.parametrize(("target", "rate", "amount", "received"), [
    ("EUR", "0.9215", 10_000, 9_215),
    ("JPY", "150.5", 12_345, 18_579),   # 123.45 USD times 150.5 = 18,579.225 JPY, to even
    ("EUR", "0.5", 3, 2),               # 1.5 cents rounds half to even: 2
])
async def test_a_payment_across_currencies_books_four_legs_at_the_given_rate(
    stack: UpProcess, client: PaystreamClient, target: str, rate: str, amount: int, received: int
) -> None:
    payer = await _funded(client, amount)
    payee = (await client.create_account(target))["id"]
    payment = await client.pay(payer, payee, amount, exchange_rate=rate)
    assert (payment["destination_amount"], payment["destination_currency"]) == (received, target)
    assert payment["exchange_rate"] == rate
    await _status(client, payment["id"], "succeeded")
    assert (await _balance(client, payer))["posted"] == 0
    assert (await _balance(client, payee))["posted"] == received


async def test_refunds_of_an_exchange_reverse_both_sides_at_the_original_rate_exactly(
    stack: UpProcess, client: PaystreamClient
) -> None:
    payer = await _funded(client, 10_000)
    payee = (await client.create_account("EUR"))["id"]
    paid = await client.pay(payer, payee, 10_000, exchange_rate="0.9215")
    await _status(client, paid["id"], "succeeded")
    assert (await _balance(client, payee))["posted"] == 9_215

    first = (await _refund(client, paid["id"], 3_333)).json()
    assert first["source_amount"] is None  # known once the ledger has posted it
    done = await _status(client, first["id"], "succeeded")
    # The refund is counted in dollars; what it took back from the payee is on it in euros.
    assert (done["amount"], done["currency"]) == (3_333, "USD")
    assert (done["source_amount"], done["source_currency"]) == (3_071, "EUR")
    # 9,215 x 3,333 / 10,000 = 3,071.36 euro cents leave the payee; 33.33 dollars come back.
    assert (await _balance(client, payee))["posted"] == 9_215 - 3_071
    assert (await _balance(client, payer))["posted"] == 3_333
    rest = (await _refund(client, paid["id"])).json()
    assert rest["amount"] == 6_667
    done = await _status(client, rest["id"], "succeeded")
    assert (done["source_amount"], done["source_currency"]) == (9_215 - 3_071, "EUR")
    assert (await _balance(client, payee))["posted"] == 0  # the shares add up exactly
    assert (await _balance(client, payer))["posted"] == 10_000
    assert (await client.get_payment(paid["id"]))["amount_refunded"] == 10_000


async def test_an_exchange_held_for_review_posts_both_sides_on_approval_and_refunds_in_full(
    stack: UpProcess, client: PaystreamClient
) -> None:
    payer = await _funded(client, REVIEW_AMOUNT)
    payee = (await client.create_account("JPY"))["id"]
    held = await client.pay(payer, payee, REVIEW_AMOUNT, exchange_rate="150.5")
    await _status(client, held["id"], "requires_review")
    assert await _balance(client, payer) == {"posted": REVIEW_AMOUNT, "pending": REVIEW_AMOUNT,
                                             "available": 0}
    await client.decide_review(await _review_of(client, held["id"]), approve=True)
    await _status(client, held["id"], "succeeded")
    assert (await _balance(client, payee))["posted"] == 301_000  # 2,000.00 USD at 150.5
    refund = (await _refund(client, held["id"])).json()
    await _status(client, refund["id"], "succeeded")
    assert (await _balance(client, payee))["posted"] == 0
    assert await _balance(client, payer) == {"posted": REVIEW_AMOUNT, "pending": 0,
                                             "available": REVIEW_AMOUNT}


async def test_mixed_currencies_need_a_rate_and_a_rate_needs_mixed_currencies(
    stack: UpProcess, client: PaystreamClient
) -> None:
    usd = await _funded(client, 1_000)
    eur = (await client.create_account("EUR"))["id"]
    other_usd = (await client.create_account("USD"))["id"]
    body = {"source_account_id": usd, "destination_account_id": eur, "amount": 100, "currency": "USD"}
    for extra, status, code in (
        ({}, 422, "currency_mismatch"),
        ({"exchange_rate": "0"}, 422, "amount_too_small"),
        ({"destination_account_id": other_usd, "exchange_rate": "1.1"}, 422, "exchange_rate_not_needed"),
        ({"currency": "EUR", "exchange_rate": "1.1"}, 422, "currency_mismatch"),
    ):
        response = await client.request("POST", "/v1/payments", json_body=body | extra,
                                        idempotency_key=uuid.uuid4().hex)
        await _problem(response, status, code)
    for rate in ("-1", "1e3", "abc", 1.1, "1.1234567890123"):
        response = await client.request("POST", "/v1/payments", json_body=body | {"exchange_rate": rate},
                                        idempotency_key=uuid.uuid4().hex)
        assert response.status_code == 422, (rate, response.text)
    assert (await _balance(client, usd))["posted"] == 1_000


# --------------------------------------------------------------------------- transfers API


async def _transfer(client: PaystreamClient, legs: list[tuple[str, str, int]], *, currency: str = "USD",
                    ref: str | None = None, **extra: Any) -> Any:
    return await client.request("POST", "/v1/transfers", json_body={
        "external_ref": ref or uuid.uuid4().hex, "currency": currency,
        "legs": [{"account_id": a, "direction": d, "amount": n} for a, d, n in legs], **extra,
    })


async def test_a_transfer_with_many_legs_posts_atomically_and_its_ref_makes_it_idempotent(
    stack: UpProcess, client: PaystreamClient
) -> None:
    payer = await _funded(client, 1_000)
    shop, fees = (await client.create_account("USD"))["id"], (await client.create_account("USD"))["id"]
    legs = [(payer, "debit", 1_000), (shop, "credit", 970), (fees, "credit", 30)]
    created = await _transfer(client, legs, ref="order-42", metadata={"order": "42"})
    assert created.status_code == 201, created.text
    transfer = created.json()
    assert (transfer["status"], transfer["amount"], transfer["metadata"]) == ("posted", 1_000, {"order": "42"})
    assert transfer["external_ref"] == "order-42" and len(transfer["legs"]) == 3

    replay = await _transfer(client, legs, ref="order-42")
    assert replay.status_code == 200 and replay.json()["id"] == transfer["id"]
    await _problem(await _transfer(client, [*legs[:1], (shop, "credit", 1_000)], ref="order-42"),
                   409, "external_ref_conflict")
    assert [(await _balance(client, a))["posted"] for a in (payer, shop, fees)] == [0, 970, 30]
    fetched = await client.call("GET", f"/v1/transfers/{transfer['id']}")
    assert fetched == transfer
    entries = await client.call("GET", f"/v1/accounts/{fees}/entries")
    assert entries["data"][0]["external_ref"] == "order-42" and entries["data"][0]["payment_id"] is None


async def test_a_refused_transfer_says_why_and_writes_nothing(stack: UpProcess, client: PaystreamClient) -> None:
    payer = await _funded(client, 500)
    payee = (await client.create_account("USD"))["id"]
    euros = (await client.create_account("EUR"))["id"]
    ghost = "acc_00000000000000000000000000"
    for legs, code in (
        ([(payer, "debit", 100), (payee, "credit", 90)], "unbalanced_transfer"),
        ([(payer, "debit", 600), (payee, "credit", 600)], "insufficient_funds"),
        ([(payer, "debit", 100), (ghost, "credit", 100)], "account_not_found"),
        ([(payer, "debit", 100), (euros, "credit", 100)], "currency_mismatch"),
        ([(payer, "debit", 100), (payer, "credit", 100)], "same_account"),
    ):
        await _problem(await _transfer(client, legs, ref="refused-once"), 422, code)
    # Legs in two currencies must balance in each: USD 100 against EUR 100 does not.
    mixed = await client.request("POST", "/v1/transfers", json_body={
        "external_ref": "mixed", "currency": "USD", "legs": [
            {"account_id": payer, "direction": "debit", "amount": 100},
            {"account_id": euros, "direction": "credit", "amount": 100, "currency": "EUR"}]})
    await _problem(mixed, 422, "unbalanced_transfer")
    assert await _balance(client, payer) == {"posted": 500, "pending": 0, "available": 500}
    # Nothing was remembered: the ref refused above is still free.
    assert (await _transfer(client, [(payer, "debit", 100), (payee, "credit", 100)],
                            ref="refused-once")).status_code == 201


async def test_holds_post_in_part_void_and_refuse_a_second_close(
    stack: UpProcess, client: PaystreamClient
) -> None:
    payer = await _funded(client, 1_000)
    payee = (await client.create_account("USD"))["id"]
    hold = (await _transfer(client, [(payer, "debit", 600), (payee, "credit", 600)], pending=True,
                            timeout_seconds=3600)).json()
    assert (hold["status"], hold["phase"]) == ("pending", "pending") and hold["expires_at"]
    assert await _balance(client, payer) == {"posted": 1_000, "pending": 600, "available": 400}
    await _problem(await _transfer(client, [(payer, "debit", 500), (payee, "credit", 500)]),
                   422, "insufficient_funds")

    await _problem(await client.request("POST", f"/v1/transfers/{hold['id']}/post",
                                        json_body={"amount": 601}), 422, "amount_exceeds_hold")
    posted = await client.call("POST", f"/v1/transfers/{hold['id']}/post", json_body={"amount": 250})
    assert posted["status"] == "posted" and posted["closed_by"]
    assert await _balance(client, payer) == {"posted": 750, "pending": 0, "available": 750}
    assert (await _balance(client, payee))["posted"] == 250
    await _problem(await client.request("POST", f"/v1/transfers/{hold['id']}/post"), 422, "hold_posted")
    await _problem(await client.request("POST", f"/v1/transfers/{hold['id']}/void"), 422, "hold_posted")
    closer = await client.call("GET", f"/v1/transfers/{posted['closed_by']}")
    assert (closer["phase"], closer["pending_id"], closer["amount"]) == ("post_pending", hold["id"], 250)

    second = (await _transfer(client, [(payer, "debit", 700), (payee, "credit", 700)], pending=True)).json()
    voided = await client.call("POST", f"/v1/transfers/{second['id']}/void")
    assert voided["status"] == "voided"
    assert await _balance(client, payer) == {"posted": 750, "pending": 0, "available": 750}
    await _problem(await client.request("POST", f"/v1/transfers/{second['id']}/post"), 422, "hold_voided")
    await _problem(await client.request("POST", "/v1/transfers/trf_00000000000000000000000000/void"),
                   404, "transfer_not_found")


async def test_a_hold_left_open_expires_by_itself(stack: UpProcess, client: PaystreamClient) -> None:
    payer = await _funded(client, 300)
    payee = (await client.create_account("USD"))["id"]
    hold = (await _transfer(client, [(payer, "debit", 300), (payee, "credit", 300)], pending=True,
                            timeout_seconds=1)).json()
    deadline = time.monotonic() + 30
    while (state := await client.call("GET", f"/v1/transfers/{hold['id']}"))["status"] == "pending":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert state["status"] == "expired"
    assert await _balance(client, payer) == {"posted": 300, "pending": 0, "available": 300}
    await _problem(await client.request("POST", f"/v1/transfers/{hold['id']}/post"), 422, "hold_expired")


async def test_a_credit_line_lets_an_account_go_down_to_its_lower_limit_and_no_further(
    stack: UpProcess, client: PaystreamClient
) -> None:
    line = (await client.create_account("USD", allow_overdraft=True, lower_limit=-5_000))
    assert (line["lower_limit"], line["normal_balance"]) == (-5_000, "credit")
    payee = (await client.create_account("USD"))["id"]
    assert (await _transfer(client, [(line["id"], "debit", 4_000), (payee, "credit", 4_000)])).status_code == 201
    await _problem(await _transfer(client, [(line["id"], "debit", 1_001), (payee, "credit", 1_001)]),
                   422, "insufficient_funds")
    assert (await _balance(client, line["id"]))["available"] == -4_000
    bad = await client.request("POST", "/v1/accounts", json_body={"currency": "USD", "lower_limit": -1})
    assert bad.status_code == 422, bad.text


async def test_the_whole_ledger_verifies_and_the_invariants_hold(stack: UpProcess) -> None:
    """Runs after the tests above (file order): everything they did checks out."""
    assert stack.info is not None
    report = await verify_database(stack.info.postgres_url)
    assert report.ok, str(report)
    invariants = await check_invariants(stack.info.postgres_url, settled=False)
    assert invariants.ok, str(invariants)
