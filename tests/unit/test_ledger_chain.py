"""The ledger's hash chain and the pure checks of `paystream ledger verify`."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from paystream.ledger import checkpoints as cp
from paystream.ledger.chain import GENESIS, EntryFields, canonical, entry_hash, extend, iso_utc
from paystream.ledger.domain import AccountState
from paystream.ledger.verify import (
    ChainedEntry,
    Checkpoint,
    Head,
    check_balances,
    check_chain,
    check_checkpoints,
    check_overdraft,
    check_transfers,
)

AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _fields(entry_id: int = 7, **changes: object) -> EntryFields:
    base = EntryFields(entry_id, "trf_1", "acc_a", "debit", 500, "EUR", AT)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _chain(*fields: EntryFields) -> tuple[list[ChainedEntry], Head]:
    links = extend(0, GENESIS, fields)
    entries = [ChainedEntry(f, link.seq, link.prev_hash, link.hash) for f, link in zip(fields, links, strict=True)]
    return entries, Head(links[-1].seq, links[-1].hash)


def test_entry_hash_is_sha256_of_a_length_prefixed_encoding() -> None:
    encoded = canonical(GENESIS, 1, _fields())
    assert encoded == GENESIS + (
        b"15:ledger-entry-v11:11:75:trf_15:acc_a5:debit3:5003:EUR27:2026-01-02T03:04:05.678901Z"
    )
    assert entry_hash(GENESIS, 1, _fields()) == hashlib.sha256(encoded).digest()


@pytest.mark.parametrize(
    "change",
    [
        {"entry_id": 8}, {"transfer_id": "trf_2"}, {"account_id": "acc_b"}, {"direction": "credit"},
        {"amount": 501}, {"currency": "USD"}, {"created_at": AT + timedelta(microseconds=1)},
        {"transfer_id": "trf_1acc_a", "account_id": ""},  # shifting text between fields
    ],
)
def test_every_field_changes_the_hash(change: dict[str, object]) -> None:
    assert entry_hash(GENESIS, 1, _fields(**change)) != entry_hash(GENESIS, 1, _fields())


def test_the_hash_covers_seq_and_prev_hash() -> None:
    assert entry_hash(GENESIS, 2, _fields()) != entry_hash(GENESIS, 1, _fields())
    assert entry_hash(b"\x01" * 32, 1, _fields()) != entry_hash(GENESIS, 1, _fields())


def test_timestamps_are_encoded_in_utc_whatever_their_zone() -> None:
    elsewhere = AT.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert iso_utc(elsewhere) == "2026-01-02T03:04:05.678901Z"
    assert entry_hash(GENESIS, 1, _fields(created_at=elsewhere)) == entry_hash(GENESIS, 1, _fields())


def test_extend_links_each_entry_to_the_one_before() -> None:
    links = extend(41, b"\x02" * 32, [_fields(1), _fields(2), _fields(3)])
    assert [link.seq for link in links] == [42, 43, 44]
    assert links[0].prev_hash == b"\x02" * 32
    assert [link.prev_hash for link in links[1:]] == [link.hash for link in links[:-1]]


def test_check_chain_passes_an_intact_chain_and_an_empty_one() -> None:
    entries, head = _chain(_fields(1), _fields(2), _fields(3))
    assert check_chain(entries, head).ok
    assert check_chain([], Head(0, GENESIS)).ok


def test_check_chain_names_the_changed_entry() -> None:
    entries, head = _chain(_fields(1), _fields(2), _fields(3))
    entries[1] = dataclasses.replace(entries[1], fields=_fields(2, amount=1))
    result = check_chain(entries, head)
    assert not result.ok and result.detail.startswith("entry 2 (seq 2): hash does not match")


def test_check_chain_notices_a_gap_a_missing_tail_and_an_unchained_entry() -> None:
    entries, head = _chain(_fields(1), _fields(2), _fields(3))
    gap = check_chain([entries[0], entries[2]], head)
    assert not gap.ok and "entry 3 (seq 3): expected seq 2" in gap.detail
    tail = check_chain(entries[:2], head)
    assert not tail.ok and "chain_head (seq 3)" in tail.detail
    loose = check_chain([*entries, ChainedEntry(_fields(4), None, None, None)], head)
    assert not loose.ok and "entry 4 is not chained" in loose.detail


def test_transfer_balance_and_overdraft_checks_name_the_first_culprit() -> None:
    legs = [
        ChainedEntry(_fields(1, direction="debit", account_id="acc_a"), 1, None, None),
        ChainedEntry(_fields(2, direction="credit", account_id="acc_b"), 2, None, None),
    ]
    a = AccountState("acc_a", "t", "EUR", "debit", True, debits_posted=500)
    b = AccountState("acc_b", "t", "EUR", "credit", False, credits_posted=500)
    assert check_transfers(["trf_1"], legs).ok
    assert check_balances([a, b], legs).ok
    assert check_overdraft([a, b]).ok

    short = check_transfers(["trf_1"], legs[:1])
    assert not short.ok and "first trf_1" in short.detail
    b.credits_posted = 400
    off = check_balances([a, b], legs)
    assert not off.ok and "first acc_b" in off.detail
    b.debits_posted = 450
    over = check_overdraft([a, b])
    assert not over.ok and "first acc_b: available -50" in over.detail


def test_checkpoints_are_due_every_k_entries_and_at_the_head() -> None:
    assert cp.due(0, set()) == []
    assert cp.due(2500, set()) == [1000, 2000, 2500]
    assert cp.due(2500, {1000, 2000}) == [2500]
    assert cp.due(3000, {1000, 2000, 2500}) == [3000]
    assert cp.due(7, set(), every=3) == [3, 6, 7]


def test_a_checkpoint_signature_covers_seq_and_hash() -> None:
    key = Ed25519PrivateKey.generate()
    signature = cp.sign(key, 5, b"\x01" * 32)
    assert cp.signature_ok(key.public_key(), 5, b"\x01" * 32, signature)
    assert not cp.signature_ok(key.public_key(), 6, b"\x01" * 32, signature)
    assert not cp.signature_ok(key.public_key(), 5, b"\x02" * 32, signature)
    assert not cp.signature_ok(Ed25519PrivateKey.generate().public_key(), 5, b"\x01" * 32, signature)


def test_check_checkpoints_catches_a_rehashed_chain_and_a_foreign_key() -> None:
    key = Ed25519PrivateKey.generate()
    entries, _ = _chain(_fields(1), _fields(2), _fields(3))
    h2 = entries[1].hash or b""
    point = Checkpoint(2, h2, cp.key_id(key.public_key()), cp.sign(key, 2, h2))
    assert check_checkpoints([point], entries, key.public_key()).ok
    assert "not checked" in check_checkpoints([point], entries, None).detail

    rewritten, _ = _chain(_fields(1), _fields(2, amount=1), _fields(3))
    moved = check_checkpoints([point], rewritten, key.public_key())
    assert not moved.ok and "seq 2 does not match the chain" in moved.detail
    other = Ed25519PrivateKey.generate().public_key()
    assert "another key" in check_checkpoints([point], entries, other).detail
    forged = dataclasses.replace(point, signature=bytes(64))
    assert "invalid signature" in check_checkpoints([forged], entries, key.public_key()).detail


def test_the_checkpoint_key_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "key.pem"
    first = cp.load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert cp.key_id(cp.load_or_create_key(path).public_key()) == cp.key_id(first.public_key())
