"""Webhook rules, pure: signatures, retry schedule, which endpoints want which event."""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
from collections.abc import Iterable

SIGNATURE_HEADER = "Paystream-Signature"
# A receiver should refuse signatures older than this (replay protection).
DEFAULT_TOLERANCE_SECONDS = 300


def new_secret() -> str:
    """A signing secret for a new endpoint (shown to the client once)."""
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Paystream-Signature`` header value: ``t=<unix>,v1=<hex HMAC-SHA256("t.body")>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, now: int, tolerance: int = DEFAULT_TOLERANCE_SECONDS) -> bool:
    """What a receiver does: check the signature and that it is recent."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected.encode(), given.encode())


def retry_delay(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with equal jitter (half fixed, half random) after ``attempt`` failures."""
    # The exponent is bounded so that a very large attempt count cannot overflow a float.
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 64))
    return (rng or random).uniform(ceiling / 2, ceiling)


def wants(endpoint_events: Iterable[str], event_type: str) -> bool:
    return event_type in set(endpoint_events)


def delivered(status_code: int) -> bool:
    """Any 2xx answer counts as delivered; everything else is retried."""
    return 200 <= status_code < 300
