"""The ledger's hash chain, pure: how an entry's hash is computed from its content.

Each entry's hash covers the previous entry's hash, so changing, removing or reordering
any entry breaks every link after it. The encoding is canonical (each field as its UTF-8
length, a colon and its text), so two different entries can never encode alike.
``chain_entry_hash`` in migrations/002_chain.sql is the same function in SQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

GENESIS = bytes(32)
"""The ``prev_hash`` of the first entry (seq 1)."""

_VERSION = "ledger-entry-v1"


@dataclass(frozen=True, slots=True)
class EntryFields:
    """What the hash of an entry covers: every column of ``entries`` but the chain's own."""

    id: int
    transfer_id: str
    account_id: str
    direction: str
    amount: int
    currency: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Link:
    """An entry's place in the chain."""

    seq: int
    prev_hash: bytes
    hash: bytes


@lru_cache(maxsize=256)  # a batch stamps all its entries with one instant
def iso_utc(moment: datetime) -> str:
    """Microsecond ISO form in UTC: what PostgreSQL's timestamptz keeps, and nothing more."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _field(value: str) -> bytes:
    data = value.encode()
    return b"%d:%b" % (len(data), data)


_PREFIX = _field(_VERSION)


def canonical(prev_hash: bytes, seq: int, entry: EntryFields) -> bytes:
    """The bytes hashed for an entry at ``seq`` following ``prev_hash``."""
    return b"".join((
        prev_hash, _PREFIX, _field(str(seq)), _field(str(entry.id)), _field(entry.transfer_id),
        _field(entry.account_id), _field(entry.direction), _field(str(entry.amount)),
        _field(entry.currency), _field(iso_utc(entry.created_at)),
    ))


def entry_hash(prev_hash: bytes, seq: int, entry: EntryFields) -> bytes:
    """sha256 of the entry's canonical encoding, chained to ``prev_hash``."""
    return hashlib.sha256(canonical(prev_hash, seq, entry)).digest()


def extend(head_seq: int, head_hash: bytes, entries: Iterable[EntryFields]) -> list[Link]:
    """Links for ``entries`` appended in order after the head ``(head_seq, head_hash)``."""
    links = []
    prev = head_hash
    for offset, entry in enumerate(entries, start=1):
        seq = head_seq + offset
        digest = entry_hash(prev, seq, entry)
        links.append(Link(seq, prev, digest))
        prev = digest
    return links
