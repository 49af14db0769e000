"""Money: an integer number of minor units and an ISO 4217 currency. No floats."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

# ISO 4217 codes paystream accepts, with their minor-unit exponent.
CURRENCIES: dict[str, int] = {
    "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "NZD": 2, "SEK": 2,
    "NOK": 2, "DKK": 2, "PLN": 2, "CZK": 2, "HUF": 2, "RON": 2, "SGD": 2, "HKD": 2,
    "CNY": 2, "INR": 2, "BRL": 2, "MXN": 2, "ZAR": 2, "NGN": 2, "KES": 2, "NPR": 2,
    "PHP": 2, "IDR": 2, "TRY": 2, "ILS": 2, "AED": 2, "SAR": 2,
    "JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "UGX": 0,
    "BHD": 3, "KWD": 3, "JOD": 3, "OMR": 3, "TND": 3,
}

# Largest amount paystream moves in one payment: fits comfortably in BIGINT sums.
MAX_AMOUNT = 10**15


def is_currency(code: str) -> bool:
    """True for an upper-case ISO 4217 code paystream supports."""
    return code in CURRENCIES


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in minor units of ``currency``; arithmetic refuses mixed currencies."""

    amount: int
    currency: str

    def __post_init__(self) -> None:
        if type(self.amount) is not int:
            raise TypeError("money amounts are integers of minor units")
        if not is_currency(self.currency):
            raise ValueError(f"unknown currency {self.currency!r}")

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"currency mismatch: {self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def format(self) -> str:
        """Human form, e.g. ``12.50 USD``."""
        exponent = CURRENCIES[self.currency]
        sign = "-" if self.amount < 0 else ""
        whole, frac = divmod(abs(self.amount), 10**exponent)
        if exponent == 0:
            return f"{sign}{whole} {self.currency}"
        return f"{sign}{whole}.{frac:0{exponent}d} {self.currency}"


def convert(amount: int, source: str, destination: str, rate: Decimal) -> int:
    """``amount`` minor units of ``source`` in minor units of ``destination``, at ``rate``.

    ``rate`` is the price of one major unit of ``source`` in major units of ``destination``
    (as quoted: EUR→USD 1.08), so the currencies' minor-unit exponents are applied here.
    Rounded half to even (the banker's rule) to whole minor units.
    """
    shift = CURRENCIES[destination] - CURRENCIES[source]
    with localcontext() as ctx:
        ctx.prec = 80  # exact for any amount and rate the API accepts
        scaled = Decimal(amount) * rate * (Decimal(10) ** shift)
        return int(scaled.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
