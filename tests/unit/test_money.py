"""Money: integer minor units, one currency, no floats."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.contracts.money import CURRENCIES, MAX_AMOUNT, Money, convert, is_currency

currencies = st.sampled_from(sorted(CURRENCIES))
amounts = st.integers(min_value=-MAX_AMOUNT, max_value=MAX_AMOUNT)


def test_adding_money_of_one_currency_adds_minor_units() -> None:
    assert Money(1250, "USD") + Money(75, "USD") == Money(1325, "USD")


def test_subtracting_money_of_one_currency_subtracts_minor_units() -> None:
    assert Money(1250, "USD") - Money(1300, "USD") == Money(-50, "USD")


def test_negating_money_flips_the_sign_and_keeps_the_currency() -> None:
    assert -Money(1250, "EUR") == Money(-1250, "EUR")


def test_adding_different_currencies_is_refused() -> None:
    with pytest.raises(ValueError, match="currency mismatch"):
        Money(100, "USD") + Money(100, "EUR")


def test_subtracting_different_currencies_is_refused() -> None:
    with pytest.raises(ValueError, match="currency mismatch"):
        Money(100, "USD") - Money(100, "EUR")


@pytest.mark.parametrize("amount", [12.5, 12.0, Decimal("12.50"), "1250", True])
def test_amount_that_is_not_a_plain_int_is_refused(amount: object) -> None:
    with pytest.raises(TypeError):
        Money(amount, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize("code", ["usd", "XXX", "", "US"])
def test_unknown_currency_is_refused(code: str) -> None:
    with pytest.raises(ValueError, match="unknown currency"):
        Money(100, code)


def test_is_currency_accepts_only_upper_case_supported_codes() -> None:
    assert is_currency("USD")
    assert not is_currency("usd")


def test_money_is_immutable() -> None:
    money = Money(100, "USD")
    with pytest.raises(dataclasses.FrozenInstanceError):
        money.amount = 200  # type: ignore[misc]


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (1250, "USD", "12.50 USD"),
        (5, "USD", "0.05 USD"),
        (0, "USD", "0.00 USD"),
        (-1250, "USD", "-12.50 USD"),
        (-5, "USD", "-0.05 USD"),
        (1250, "JPY", "1250 JPY"),
        (-7, "JPY", "-7 JPY"),
        (1005, "KWD", "1.005 KWD"),
        (100_000_000_00, "EUR", "100000000.00 EUR"),
    ],
)
def test_format_shows_major_units_with_the_currency_exponent(
    amount: int, currency: str, expected: str
) -> None:
    assert Money(amount, currency).format() == expected


@given(amount=amounts, currency=currencies)
def test_format_round_trips_to_the_same_minor_units(amount: int, currency: str) -> None:
    number, code = Money(amount, currency).format().split(" ")
    exponent = CURRENCIES[currency]
    sign = -1 if number.startswith("-") else 1
    whole, _, frac = number.lstrip("-").partition(".")
    assert code == currency
    assert len(frac) == exponent
    assert sign * (int(whole) * 10**exponent + int(frac or "0")) == amount


@given(a=amounts, b=amounts, c=amounts, currency=currencies)
def test_addition_is_associative_and_commutative(a: int, b: int, c: int, currency: str) -> None:
    x, y, z = Money(a, currency), Money(b, currency), Money(c, currency)
    assert (x + y) + z == x + (y + z)
    assert x + y == y + x


@given(a=amounts, b=amounts, currency=currencies)
def test_subtraction_undoes_addition(a: int, b: int, currency: str) -> None:
    x, y = Money(a, currency), Money(b, currency)
    assert (x + y) - y == x


@given(a=amounts, b=amounts, currency=currencies)
def test_arithmetic_results_stay_integers(a: int, b: int, currency: str) -> None:
    x, y = Money(a, currency), Money(b, currency)
    for result in (x + y, x - y, -x):
        assert type(result.amount) is int


@pytest.mark.parametrize(("amount", "source", "destination", "rate", "expected"), [
    (10_000, "USD", "EUR", "0.9215", 9_215),
    (12_345, "USD", "JPY", "150.5", 18_579),     # 18,579.225 yen
    (3, "USD", "EUR", "0.5", 2),                 # 1.5 → 2 (half to even)
    (5, "USD", "EUR", "0.5", 2),                 # 2.5 → 2 (half to even)
    (1_000, "JPY", "USD", "0.0066", 660),        # 1,000 yen is 6.60 dollars
    (1_000, "USD", "BHD", "0.376", 3_760),       # three-decimal currency
    (10**15, "USD", "BHD", "999999999999.999999999999",
     9_999_999_999_999_999_999_999_990_000),  # exact: no precision lost
])
def test_convert_applies_the_rate_and_both_exponents_rounding_half_to_even(
    amount: int, source: str, destination: str, rate: str, expected: int
) -> None:
    assert convert(amount, source, destination, Decimal(rate)) == expected
