"""Gateway rules: scopes, idempotency keys, request fingerprints, idempotency verdicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.gateway.domain import (
    StoredKey,
    fingerprint,
    idempotency_verdict,
    parse_scope,
    valid_idempotency_key,
)

ALLOWED = frozenset({"payments:read", "payments:write", "accounts:read"})
NOW = datetime(2024, 11, 20, 12, 0, tzinfo=UTC)
BODY = {"amount": 1250, "currency": "USD", "destination": "acc_1"}


# Scopes.


@pytest.mark.parametrize("requested", [None, ""])
def test_no_requested_scope_grants_everything_allowed(requested: str | None) -> None:
    assert parse_scope(requested, ALLOWED) == ALLOWED


def test_requested_subset_is_granted_exactly() -> None:
    assert parse_scope("payments:read accounts:read", ALLOWED) == {
        "payments:read", "accounts:read"
    }


def test_repeated_spaces_between_scopes_are_ignored() -> None:
    assert parse_scope("  payments:read   payments:read ", ALLOWED) == {"payments:read"}


def test_any_scope_not_allowed_refuses_the_whole_request() -> None:
    assert parse_scope("payments:read admin", ALLOWED) is None


# Idempotency keys.


@pytest.mark.parametrize(("length", "ok"), [(0, False), (1, True), (255, True), (256, False)])
def test_idempotency_key_length_must_be_1_to_255(length: int, ok: bool) -> None:
    assert valid_idempotency_key("k" * length) is ok


@pytest.mark.parametrize("char", ["\x00", "\t", "\n", "\x1f", "\x7f", "é", "€", "\u200b"])
def test_idempotency_key_with_a_non_printable_or_non_ascii_character_is_refused(
    char: str,
) -> None:
    assert not valid_idempotency_key(f"order-{char}-1")


def test_idempotency_key_of_visible_ascii_punctuation_is_accepted() -> None:
    assert valid_idempotency_key("a-Z_0.9:~!{}|" + "x" * 10)


# Fingerprints.


def test_fingerprint_ignores_key_order() -> None:
    reordered = {"destination": "acc_1", "currency": "USD", "amount": 1250}
    assert fingerprint("POST", "/v1/payments", BODY) == fingerprint(
        "POST", "/v1/payments", reordered
    )


def test_fingerprint_ignores_key_order_in_nested_objects() -> None:
    first = {"meta": {"a": 1, "b": 2}, "amount": 1}
    second = {"amount": 1, "meta": {"b": 2, "a": 1}}
    assert fingerprint("POST", "/v1/payments", first) == fingerprint(
        "POST", "/v1/payments", second
    )


def test_fingerprint_changes_with_a_value() -> None:
    changed = {**BODY, "amount": 1251}
    assert fingerprint("POST", "/v1/payments", BODY) != fingerprint(
        "POST", "/v1/payments", changed
    )


def test_fingerprint_changes_with_the_method() -> None:
    assert fingerprint("POST", "/v1/payments", BODY) != fingerprint("PUT", "/v1/payments", BODY)


def test_fingerprint_changes_with_the_path() -> None:
    assert fingerprint("POST", "/v1/payments", BODY) != fingerprint("POST", "/v1/deposits", BODY)


@given(
    body=st.dictionaries(
        st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5), st.booleans()),
        max_size=6,
    )
)
def test_fingerprint_is_the_same_for_any_ordering_of_the_same_body(
    body: dict[str, object],
) -> None:
    reversed_body = dict(reversed(list(body.items())))
    assert fingerprint("POST", "/v1/payments", body) == fingerprint(
        "POST", "/v1/payments", reversed_body
    )


# Idempotency verdicts.


def _stored(
    state: Literal["running", "done"],
    *,
    locked_until: datetime = NOW,
    body: object = BODY,
) -> StoredKey:
    return StoredKey(
        fingerprint=fingerprint("POST", "/v1/payments", body),
        state=state,
        locked_until=locked_until,
        status_code=201 if state == "done" else None,
        response_body=b"{}" if state == "done" else None,
        response_type="application/json" if state == "done" else None,
    )


FP = fingerprint("POST", "/v1/payments", BODY)


def test_finished_request_under_the_same_key_is_replayed() -> None:
    assert idempotency_verdict(_stored("done"), FP, NOW) == "replay"


def test_different_request_under_the_same_key_is_a_mismatch() -> None:
    stored = _stored("done", body={**BODY, "amount": 1})
    assert idempotency_verdict(stored, FP, NOW) == "mismatch"


def test_different_request_is_a_mismatch_even_while_the_first_still_runs() -> None:
    stored = _stored("running", locked_until=NOW + timedelta(seconds=30), body={"x": 1})
    assert idempotency_verdict(stored, FP, NOW) == "mismatch"


def test_same_request_still_running_under_its_lease_is_in_progress() -> None:
    stored = _stored("running", locked_until=NOW + timedelta(seconds=1))
    assert idempotency_verdict(stored, FP, NOW) == "in_progress"


def test_same_request_whose_lease_expired_may_be_taken_over() -> None:
    stored = _stored("running", locked_until=NOW - timedelta(seconds=1))
    assert idempotency_verdict(stored, FP, NOW) == "take_over"


def test_lease_ending_exactly_now_may_be_taken_over() -> None:
    assert idempotency_verdict(_stored("running", locked_until=NOW), FP, NOW) == "take_over"


def test_finished_request_is_replayed_even_after_its_lease_expired() -> None:
    stored = _stored("done", locked_until=NOW - timedelta(hours=1))
    assert idempotency_verdict(stored, FP, NOW) == "replay"
