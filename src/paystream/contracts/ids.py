"""Opaque, time-ordered identifiers with a type prefix (``pay_01J...``).

The body is a ULID: 48 bits of milliseconds then 80 random bits, in Crockford
base32, so ids sort by creation time and ``starting_after`` pagination can use them.
"""

from __future__ import annotations

import os
import time
from typing import NewType

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two base32 digits per lookup: a ULID's 130 bits (two leading zeros) are 13 pairs.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_SHIFTS = tuple(range(120, -10, -10))

# Ids typed by what they name, for the commands and rows between a service's layers: the same
# str at run time, told apart by the type checker.
PaymentId = NewType("PaymentId", str)
AccountId = NewType("AccountId", str)
TenantId = NewType("TenantId", str)

PREFIXES = frozenset({"acc", "pay", "whe", "rev", "evt", "trf", "cli", "usr", "card", "del", "ent", "rtk", "fam"})


def _ulid(ms: int, rand: bytes) -> str:
    value = (ms << 80) | int.from_bytes(rand, "big")
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def new_id(prefix: str) -> str:
    """A new id such as ``pay_01JD3...``; ``prefix`` must be one of `PREFIXES`."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return f"{prefix}_{_ulid(time.time_ns() // 1_000_000, os.urandom(10))}"


def has_prefix(value: str, prefix: str) -> bool:
    """True when ``value`` looks like an id of type ``prefix``."""
    body = value[len(prefix) + 1 :]
    return (
        value.startswith(prefix + "_")
        and len(body) == 26
        and all(c in _ALPHABET for c in body)
    )
