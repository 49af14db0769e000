"""Opaque, time-ordered identifiers with a type prefix (``pay_01J...``).

The body is a ULID: 48 bits of milliseconds then 80 random bits, in Crockford
base32, so ids sort by creation time and ``starting_after`` pagination can use them.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

PREFIXES = frozenset({"acc", "pay", "whe", "rev", "evt", "trf", "cli", "usr", "card", "del", "ent", "rtk", "fam"})


def _ulid(ms: int, rand: bytes) -> str:
    value = (ms << 80) | int.from_bytes(rand, "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


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
