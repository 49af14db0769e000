"""Card numbers in, card tokens out: the rules, pure (no I/O).

A number is accepted only if it is 13-19 digits (spaces and dashes allowed between
groups) and passes Luhn; the CVC only if it has the brand's length. The CVC is checked
and then dropped — it is never stored (PCI DSS 3.3.1.2). What may be shown is the brand,
the last four digits and the expiry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEPARATORS = re.compile(r"[ -]")
_BRANDS: tuple[tuple[str, tuple[range, ...], int], ...] = (
    # brand, leading-digit ranges (matched on as many digits as the range bounds have), CVC length
    ("amex", (range(34, 35), range(37, 38)), 4),
    ("visa", (range(4, 5),), 3),
    ("mastercard", (range(51, 56), range(2221, 2721)), 3),
    ("discover", (range(6011, 6012), range(644, 650), range(65, 66)), 3),
    ("jcb", (range(3528, 3590),), 3),
    ("diners", (range(300, 306), range(36, 37), range(38, 40)), 3),
)


class CardRejected(ValueError):
    """The card details are not acceptable; ``field`` names which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class CardNumber:
    digits: str
    brand: str
    cvc_length: int

    @property
    def last4(self) -> str:
        return self.digits[-4:]


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def brand_of(digits: str) -> tuple[str, int]:
    for brand, ranges, cvc_length in _BRANDS:
        for prefixes in ranges:
            width = len(str(prefixes.start))
            if int(digits[:width]) in prefixes:
                return brand, cvc_length
    return "unknown", 3


def parse_number(raw: str) -> CardNumber:
    digits = _SEPARATORS.sub("", raw)
    if not digits.isascii() or not digits.isdigit() or not 13 <= len(digits) <= 19:
        raise CardRejected("number", "a card number has 13 to 19 digits")
    if not luhn_valid(digits):
        raise CardRejected("number", "the card number is not valid")
    brand, cvc_length = brand_of(digits)
    return CardNumber(digits, brand, cvc_length)


def check_cvc(card: CardNumber, cvc: str) -> None:
    if not (cvc.isascii() and cvc.isdigit() and len(cvc) == card.cvc_length):
        raise CardRejected("cvc", f"the CVC of a {card.brand} card has {card.cvc_length} digits")


def check_expiry(month: int, year: int, *, today_year: int, today_month: int) -> None:
    if not 1 <= month <= 12:
        raise CardRejected("exp_month", "the expiry month is 1 to 12")
    if (year, month) < (today_year, today_month):
        raise CardRejected("exp_year", "the card has expired")
    if year > today_year + 20:
        raise CardRejected("exp_year", "the expiry year is too far ahead")
