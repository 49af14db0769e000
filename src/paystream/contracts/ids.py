"""Opaque, time-ordered identifiers with a type prefix (``pay_01J...``).

The body is a ULID: 48 bits of milliseconds then 80 random bits, in Crockford
base32, so ids sort by creation time and ``starting_after`` pagination can use them.

The random part is drawn ahead in bulk: one ``os.urandom`` call gives the random digits of
`_DRAW` ids (a ledger batch mints two ids per transfer, and one system call per id was a
fifth of the batch's Python time). Each random byte becomes one base32 digit by its low five
bits; 256 is a multiple of 32, so every digit is uniform, and the 16 digits of an id carry
the same 80 random bits as before. The digits drawn ahead are dropped in a child process
after ``fork``, so a parent and its child never mint the same id.
"""

from __future__ import annotations

import os
import time
from typing import NewType

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two base32 digits per lookup: a ULID's 50 time bits (two leading zeros) are 5 pairs.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_TIME_SHIFTS = (40, 30, 20, 10, 0)
# A random byte to a base32 digit: its low five bits.
_TO_DIGIT = bytes(ord(_ALPHABET[b % 32]) for b in range(256))
_RANDOM_DIGITS = 16  # 80 bits
_DRAW = 512  # random parts per system call

# Ids typed by what they name, for the commands and rows between a service's layers: the same
# str at run time, told apart by the type checker.
PaymentId = NewType("PaymentId", str)
AccountId = NewType("AccountId", str)
TenantId = NewType("TenantId", str)

PREFIXES = frozenset({"acc", "pay", "whe", "rev", "evt", "trf", "cli", "usr", "card", "del", "ent", "rtk", "fam"})

# Random parts drawn ahead (list.pop and list.extend are atomic, so threads may share it: a
# race can only draw more than needed), and the time part of the last millisecond used.
_drawn: list[str] = []
_last_time: tuple[int, str] = (-1, "")


def _time_digits(ms: int) -> str:
    """The ULID's first ten digits: the millisecond, most significant digit first."""
    global _last_time
    last_ms, digits = _last_time
    if ms != last_ms:
        digits = "".join([_PAIRS[(ms >> shift) & 1023] for shift in _TIME_SHIFTS])
        _last_time = (ms, digits)
    return digits


def _draw(count: int) -> list[str]:
    """``count`` random parts of 16 base32 digits, from one ``os.urandom`` call."""
    digits = os.urandom(_RANDOM_DIGITS * count).translate(_TO_DIGIT).decode("ascii")
    return [digits[i:i + _RANDOM_DIGITS] for i in range(0, len(digits), _RANDOM_DIGITS)]


def _random_digits() -> str:
    while True:
        try:
            return _drawn.pop()
        except IndexError:
            _drawn.extend(_draw(_DRAW))


def new_id(prefix: str) -> str:
    """A new id such as ``pay_01JD3...``; ``prefix`` must be one of `PREFIXES`."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return f"{prefix}_{_time_digits(time.time_ns() // 1_000_000)}{_random_digits()}"


def has_prefix(value: str, prefix: str) -> bool:
    """True when ``value`` looks like an id of type ``prefix``."""
    body = value[len(prefix) + 1 :]
    return (
        value.startswith(prefix + "_")
        and len(body) == 26
        and all(c in _ALPHABET for c in body)
    )


os.register_at_fork(after_in_child=_drawn.clear)
