"""Gateway rules, pure: scopes, idempotency verdicts, request fingerprints."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

SCOPES: tuple[str, ...] = (
    "accounts:read", "accounts:write", "payments:read", "payments:write", "webhooks:write",
    "reviews:write", "users:write", "cards:write", "ledger:read", "ledger:write", "admin",
)

MAX_IDEMPOTENCY_KEY = 255


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid access token speaks for."""

    client_id: str
    tenant_id: str
    scopes: frozenset[str]
    user_id: str | None
    expires_at: int


def parse_scope(requested: str | None, allowed: frozenset[str]) -> frozenset[str] | None:
    """The scopes to grant: all allowed when none asked; None if any asked is not allowed."""
    if not requested:
        return allowed
    wanted = frozenset(requested.split())
    return wanted if wanted <= allowed else None


def valid_idempotency_key(key: str) -> bool:
    """1-255 printable ASCII characters."""
    return 1 <= len(key) <= MAX_IDEMPOTENCY_KEY and all(32 < ord(c) < 127 for c in key)


def fingerprint(method: str, path: str, body: Any) -> str:
    """What "the same request" means: method, path and the JSON body with keys sorted."""
    try:
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # integers past 64 bits: the slower encoder has no such limit
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(f"{method} {path}\n".encode() + canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredKey:
    fingerprint: str
    state: Literal["running", "done"]
    locked_until: datetime
    status_code: int | None
    response_body: bytes | None
    response_type: str | None


Verdict = Literal["replay", "mismatch", "in_progress", "take_over"]


def idempotency_verdict(stored: StoredKey, request_fingerprint: str, now: datetime) -> Verdict:
    """What to do with a request whose key was seen before.

    A different request under the same key is refused; a finished one is replayed; one
    still running is refused for now; one whose runner vanished (lease expired) may be
    run again, which is safe because the services are idempotent on the key too.
    """
    if stored.fingerprint != request_fingerprint:
        return "mismatch"
    if stored.state == "done":
        return "replay"
    if stored.locked_until > now:
        return "in_progress"
    return "take_over"
