"""Admitting a payment, pure: accounts it may use, exchange terms, refund limits. No I/O."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.contracts.money import MAX_AMOUNT, Money
from paystream.payments.domain import (
    AccountId,
    DirectoryEntry,
    ExchangeTerms,
    PaymentRequest,
    accounts_to_check,
    admit,
    exchange_terms,
    refund_amount,
)
from paystream.platform.errors import Invalid, NotFound

SRC, DST = AccountId("acc_src"), AccountId("acc_dst")


def _entry(account_id: str, currency: str, owner: str | None = None) -> DirectoryEntry:
    return DirectoryEntry(account_id, "ten_a", currency, owner)


def _accounts(*entries: DirectoryEntry) -> dict[str, DirectoryEntry]:
    return {e.account_id: e for e in entries}


def _transfer(amount: int = 1_000, currency: str = "USD", rate: str | None = None) -> PaymentRequest:
    return PaymentRequest(kind="transfer", source_account_id=SRC, destination_account_id=DST,
                          amount=Money(amount, currency), exchange_rate=rate)


def _code(exc: pytest.ExceptionInfo[Invalid] | pytest.ExceptionInfo[NotFound]) -> str:
    return exc.value.code


# --- accounts ---------------------------------------------------------------------------


def test_a_transfer_checks_its_source_and_destination() -> None:
    assert accounts_to_check(_transfer()) == [SRC, DST]


def test_a_deposit_checks_only_its_destination() -> None:
    deposit = PaymentRequest(kind="deposit", source_account_id=None, destination_account_id=DST,
                             amount=Money(500, "USD"))
    assert accounts_to_check(deposit) == [DST]


def test_paying_an_account_into_itself_is_refused_as_same_account() -> None:
    request = PaymentRequest(kind="transfer", source_account_id=SRC, destination_account_id=SRC,
                             amount=Money(500, "USD"))
    with pytest.raises(Invalid) as exc:
        accounts_to_check(request)
    assert _code(exc) == "same_account"


def test_an_account_missing_from_the_directory_is_not_found() -> None:
    with pytest.raises(NotFound) as exc:
        admit(_transfer(), _accounts(_entry(DST, "USD")), user_id=None)
    assert _code(exc) == "account_not_found"
    assert exc.value.detail == f"no account {SRC}"


def test_a_user_may_not_pay_from_an_account_they_do_not_own() -> None:
    accounts = _accounts(_entry(SRC, "USD", owner="usr_b"), _entry(DST, "USD"))
    with pytest.raises(NotFound) as exc:
        admit(_transfer(), accounts, user_id="usr_a")
    assert _code(exc) == "account_not_found"


def test_a_user_may_pay_from_their_own_account_into_anyone_s() -> None:
    accounts = _accounts(_entry(SRC, "USD", owner="usr_a"), _entry(DST, "USD", owner="usr_b"))
    assert admit(_transfer(), accounts, user_id="usr_a") is None


def test_a_currency_mismatch_is_reported_before_the_owner_check() -> None:
    accounts = _accounts(_entry(SRC, "EUR", owner="usr_b"), _entry(DST, "USD"))
    with pytest.raises(Invalid) as exc:
        admit(_transfer(), accounts, user_id="usr_a")
    assert _code(exc) == "currency_mismatch"


# --- exchange terms ---------------------------------------------------------------------


def _terms(amount: Money, rate: str | None, *, source: str | None = SRC, source_currency: str | None = "USD",
           destination_currency: str = "EUR") -> ExchangeTerms | None:
    return exchange_terms(amount, rate, source=source, source_currency=source_currency,
                          destination=DST, destination_currency=destination_currency)


def test_one_currency_needs_no_exchange_terms() -> None:
    assert _terms(Money(1_000, "USD"), None, destination_currency="USD") is None


def test_across_currencies_the_destination_receives_amount_times_rate() -> None:
    assert _terms(Money(1_000, "USD"), "0.92") == ExchangeTerms(Money(920, "EUR"), Decimal("0.92"))


def test_exchange_applies_the_currencies_minor_units() -> None:
    terms = _terms(Money(1_000, "USD"), "150.5", destination_currency="JPY")
    assert terms == ExchangeTerms(Money(1_505, "JPY"), Decimal("150.5"))


def test_a_source_in_another_currency_than_the_payment_is_refused() -> None:
    with pytest.raises(Invalid) as exc:
        _terms(Money(1_000, "USD"), None, source_currency="GBP", destination_currency="USD")
    assert _code(exc) == "currency_mismatch"
    assert exc.value.detail == f"account {SRC} holds GBP, not USD"


def test_a_destination_in_another_currency_without_a_rate_is_refused() -> None:
    with pytest.raises(Invalid) as exc:
        _terms(Money(1_000, "USD"), None)
    assert _code(exc) == "currency_mismatch"


def test_a_rate_between_accounts_of_one_currency_is_refused() -> None:
    with pytest.raises(Invalid) as exc:
        _terms(Money(1_000, "USD"), "1.0", destination_currency="USD")
    assert _code(exc) == "exchange_rate_not_needed"


def test_a_deposit_across_currencies_is_refused() -> None:
    with pytest.raises(Invalid) as exc:
        _terms(Money(1_000, "USD"), "0.92", source=None, source_currency=None)
    assert _code(exc) == "currency_mismatch"


@pytest.mark.parametrize("rate", ["0", "0.0001"])
def test_a_rate_that_pays_the_destination_nothing_is_refused(rate: str) -> None:
    with pytest.raises(Invalid) as exc:
        _terms(Money(1_000, "USD"), rate)
    assert _code(exc) == "amount_too_small"
    assert exc.value.detail == f"at {rate} the destination would receive nothing"


def test_a_converted_amount_past_the_maximum_is_refused() -> None:
    with pytest.raises(Invalid) as exc:
        _terms(Money(MAX_AMOUNT, "USD"), "2")
    assert _code(exc) == "amount_too_large"


# --- refund limits ----------------------------------------------------------------------


def test_a_refund_with_no_amount_takes_what_is_left() -> None:
    assert refund_amount("transfer", "succeeded", 1_000, 300, None) == 700


def test_a_refund_may_ask_for_part_of_what_is_left() -> None:
    assert refund_amount("transfer", "succeeded", 1_000, 300, 200) == 200


def test_a_refund_cannot_be_refunded() -> None:
    with pytest.raises(Invalid) as exc:
        refund_amount("refund", "succeeded", 1_000, 0, None)
    assert _code(exc) == "payment_not_refundable"


@pytest.mark.parametrize("status", ["processing", "requires_review", "failed", "declined"])
def test_only_a_succeeded_payment_can_be_refunded(status: str) -> None:
    with pytest.raises(Invalid) as exc:
        refund_amount("transfer", status, 1_000, 0, None)
    assert _code(exc) == "payment_not_refundable"
    assert exc.value.detail == f"only a succeeded payment can be refunded; this one is {status}"


def test_a_payment_refunded_in_full_refuses_another_refund() -> None:
    with pytest.raises(Invalid) as exc:
        refund_amount("deposit", "succeeded", 1_000, 1_000, None)
    assert _code(exc) == "refund_exceeds_payment"
    assert exc.value.detail == "the payment has been refunded in full"


def test_a_refund_past_what_is_left_is_refused() -> None:
    with pytest.raises(Invalid) as exc:
        refund_amount("transfer", "succeeded", 1_000, 600, 500)
    assert _code(exc) == "refund_exceeds_payment"
    assert exc.value.detail == "only 400 of the payment is left to refund"


@given(amount=st.integers(1, MAX_AMOUNT), asks=st.lists(st.integers(1, MAX_AMOUNT), max_size=20))
def test_admitted_refunds_never_add_up_past_the_payment(amount: int, asks: list[int]) -> None:
    claimed = 0
    for asked in asks:
        try:
            claimed += refund_amount("transfer", "succeeded", amount, claimed, asked)
        except Invalid:
            pass
    assert 0 <= claimed <= amount
