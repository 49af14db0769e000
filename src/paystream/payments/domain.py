"""The payment state machine, pure.

    processing ──fraud.review──▶ requires_review ──fraud.approved──▶ processing
        │  └──fraud.declined──▶ declined ◀──fraud.declined──┘
        ├──ledger.posted────▶ succeeded
        └──ledger.rejected──▶ failed

Terminal states (succeeded, failed, declined) absorb every later signal: a payment
reaches exactly one of them, once, whatever order or how many times events arrive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["processing", "requires_review", "succeeded", "failed", "declined"]
Signal = Literal[
    "fraud.approved", "fraud.review", "fraud.declined", "ledger.posted", "ledger.rejected"
]

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "declined"})
SIGNALS: frozenset[str] = frozenset(
    {"fraud.approved", "fraud.review", "fraud.declined", "ledger.posted", "ledger.rejected"}
)


@dataclass(frozen=True, slots=True)
class Transition:
    """A status change: what to store, and which public event (if any) announces it."""

    status: Status
    failure_code: str | None
    public_event: str | None
    timeline_type: str


def next_state(status: Status, signal: Signal, failure_code: str | None = None) -> Transition | None:
    """The transition ``signal`` causes from ``status``; ``None`` when it changes nothing."""
    if status in TERMINAL:
        return None
    if signal == "ledger.posted":
        return Transition("succeeded", None, "payment.succeeded", "payment.succeeded")
    if signal == "ledger.rejected":
        return Transition("failed", failure_code or "ledger_rejected", "payment.failed", "payment.failed")
    if signal == "fraud.declined":
        return Transition("declined", "fraud_declined", "payment.declined", "payment.declined")
    if signal == "fraud.review":
        if status == "processing":
            return Transition(
                "requires_review", None, "payment.requires_review", "payment.requires_review"
            )
        return None
    if signal == "fraud.approved":
        if status == "requires_review":
            return Transition("processing", None, None, "payment.review_approved")
        return None
    raise ValueError(f"unknown signal {signal!r}")


def is_terminal(status: str) -> bool:
    return status in TERMINAL
