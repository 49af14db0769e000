"""Webhook signatures and the retry schedule."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.notifications.domain import (
    DEFAULT_TOLERANCE_SECONDS,
    delivered,
    new_secret,
    retry_delay,
    sign,
    verify,
    wants,
)

SECRET = "whsec_test_secret"
BODY = b'{"type":"payment.succeeded","data":{"id":"pay_1"}}'
NOW = 1_732_000_000


def test_signature_verifies_with_the_same_secret_and_body() -> None:
    assert verify(SECRET, sign(SECRET, NOW, BODY), BODY, now=NOW)


@given(secret=st.text(min_size=1), body=st.binary(), timestamp=st.integers(0, 2**40))
def test_any_signed_body_verifies(secret: str, body: bytes, timestamp: int) -> None:
    assert verify(secret, sign(secret, timestamp, body), body, now=timestamp)


def test_signature_header_carries_timestamp_and_v1_hmac() -> None:
    header = sign(SECRET, NOW, BODY)
    t, v1 = header.split(",")
    assert t == f"t={NOW}"
    assert v1.startswith("v1=")
    assert len(v1.removeprefix("v1=")) == 64


def test_tampered_body_is_rejected() -> None:
    header = sign(SECRET, NOW, BODY)
    assert not verify(SECRET, header, BODY.replace(b"pay_1", b"pay_2"), now=NOW)


def test_other_secret_is_rejected() -> None:
    header = sign(SECRET, NOW, BODY)
    assert not verify("whsec_other", header, BODY, now=NOW)


def test_tampered_timestamp_is_rejected() -> None:
    signature = sign(SECRET, NOW, BODY).split(",")[1]
    assert not verify(SECRET, f"t={NOW + 1},{signature}", BODY, now=NOW)


def test_signature_older_than_tolerance_is_rejected() -> None:
    header = sign(SECRET, NOW - DEFAULT_TOLERANCE_SECONDS - 1, BODY)
    assert not verify(SECRET, header, BODY, now=NOW)


def test_signature_exactly_at_tolerance_is_accepted() -> None:
    header = sign(SECRET, NOW - DEFAULT_TOLERANCE_SECONDS, BODY)
    assert verify(SECRET, header, BODY, now=NOW)


def test_signature_from_too_far_in_the_future_is_rejected() -> None:
    header = sign(SECRET, NOW + DEFAULT_TOLERANCE_SECONDS + 1, BODY)
    assert not verify(SECRET, header, BODY, now=NOW)


def test_custom_tolerance_is_honoured() -> None:
    header = sign(SECRET, NOW - 10, BODY)
    assert not verify(SECRET, header, BODY, now=NOW, tolerance=5)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "t=abc,v1=00",
        f"v1={'0' * 64}",  # no timestamp
        f"t={NOW}",  # no signature
        f"t={NOW};v1={'0' * 64}",  # wrong separator
        f"t={NOW},v1=",
        f"t={NOW},v1={'0' * 64}",  # well-formed, wrong signature
    ],
)
def test_malformed_or_wrong_header_is_rejected(header: str) -> None:
    assert not verify(SECRET, header, BODY, now=NOW)


def test_non_ascii_signature_is_rejected_not_raised() -> None:
    # Headers come from the network: a receiver must get False, not an exception.
    assert not verify(SECRET, f"t={NOW},v1=é", BODY, now=NOW)


def test_new_secrets_are_prefixed_and_unique() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_")
    assert first != second


# Retry schedule.


@given(attempt=st.integers(1, 64), seed=st.integers(0, 2**32))
def test_retry_delay_never_exceeds_the_cap(attempt: int, seed: int) -> None:
    assert retry_delay(attempt, base=1.0, cap=300.0, rng=random.Random(seed)) <= 300.0


@given(attempt=st.integers(1, 64), seed=st.integers(0, 2**32))
def test_retry_delay_is_at_least_half_its_ceiling(attempt: int, seed: int) -> None:
    ceiling = min(300.0, 1.0 * 2 ** (attempt - 1))
    assert retry_delay(attempt, base=1.0, cap=300.0, rng=random.Random(seed)) >= ceiling / 2


@given(seed=st.integers(0, 2**32))
def test_retry_delay_grows_with_each_attempt_until_the_cap(seed: int) -> None:
    # Equal jitter keeps attempt n+1 in [c, 2c] while attempt n is in [c/2, c], so delays
    # never shrink while the ceiling doubles: attempts 1..9 (ceilings 1..256 under a 300 cap).
    rng = random.Random(seed)
    delays = [retry_delay(attempt, base=1.0, cap=300.0, rng=rng) for attempt in range(1, 10)]
    assert delays == sorted(delays)
    assert delays[-1] > delays[0]


def test_first_retry_waits_between_half_and_one_base() -> None:
    assert 0.5 <= retry_delay(1, base=1.0, cap=300.0, rng=random.Random(7)) <= 1.0


def test_retry_delay_is_reproducible_with_a_seeded_random() -> None:
    first = [retry_delay(a, base=1.0, cap=60.0, rng=random.Random(42)) for a in range(1, 9)]
    second = [retry_delay(a, base=1.0, cap=60.0, rng=random.Random(42)) for a in range(1, 9)]
    assert first == second


def test_retry_delay_is_jittered() -> None:
    rng = random.Random(3)
    assert len({retry_delay(10, base=1.0, cap=60.0, rng=rng) for _ in range(20)}) > 1


def test_retry_delay_stays_at_the_cap_for_very_large_attempt_counts() -> None:
    # base * 2**(attempt-1) overflows a float past attempt ~1025: the cap must still hold.
    delay = retry_delay(2_000, base=1.0, cap=300.0, rng=random.Random(1))
    assert 150.0 <= delay <= 300.0


# Routing and delivery outcome.


def test_endpoint_wants_only_the_events_it_subscribed_to() -> None:
    assert wants(["payment.succeeded"], "payment.succeeded")
    assert not wants(["payment.succeeded"], "payment.failed")


@pytest.mark.parametrize(("status", "ok"), [(199, False), (200, True), (204, True),
                                            (299, True), (300, False), (500, False)])
def test_only_2xx_counts_as_delivered(status: int, ok: bool) -> None:
    assert delivered(status) is ok
