"""The payment state machine, pure.

    processing ──fraud.review / screening.deadline──▶ requires_review ──review.approved──▶ processing
        │  └──fraud.declined──▶ declined ◀──review.declined──┘
        ├──ledger.posted────▶ succeeded
        └──ledger.rejected──▶ failed

Two kinds of fraud signal, told apart by whether they name a review:

* **screening decisions** (``fraud.approved``, ``fraud.review``, ``fraud.declined`` without a
  review, and ``screening.deadline``, which payments' own deadline worker gives when fraud
  has not decided in time): a payment has exactly one. **The first screening decision wins**;
  any later one (fraud's decision arriving after the deadline sent the payment to review, a
  duplicate) changes nothing. A transition records it in ``screening``, even an approval,
  which leaves the status as it is (the payment waits for the ledger);
* **resolutions of a review** (``review.approved``, ``review.declined``: a reviewer's, or
  fraud's re-screen once a dependency is back), carried by ``fraud.approved`` and
  ``fraud.declined`` events that name the review. An approval continues a payment under
  review; a decline declines any payment not yet finished.

The ledger's outcome settles the payment from either open state: the money has moved, or
not. Terminal states (succeeded, failed, declined) absorb every later signal: a payment
reaches exactly one of them, once, whatever order or how many times events arrive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["processing", "requires_review", "succeeded", "failed", "declined"]
Signal = Literal[
    "fraud.approved", "fraud.review", "fraud.declined", "screening.deadline",
    "review.approved", "review.declined", "ledger.posted", "ledger.rejected",
]
Screening = Literal["approve", "review", "decline", "deadline"]

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "declined"})
# The first screening decision a payment gets, by the signal that carries it.
SCREENINGS: dict[str, Screening] = {
    "fraud.approved": "approve", "fraud.review": "review", "fraud.declined": "decline",
    "screening.deadline": "deadline",
}
SIGNALS: frozenset[str] = frozenset(
    {*SCREENINGS, "review.approved", "review.declined", "ledger.posted", "ledger.rejected"}
)
DEADLINE_REASON = "screening_deadline"


@dataclass(frozen=True, slots=True)
class Transition:
    """A change to store: the status, and which public event and timeline row (if any)
    announce it. ``screening`` is the screening decision it records (None: none)."""

    status: Status
    failure_code: str | None
    public_event: str | None
    timeline_type: str | None
    screening: Screening | None = None


def next_state(
    status: Status, signal: Signal, failure_code: str | None = None, *, screened: bool = False
) -> Transition | None:
    """The transition ``signal`` causes from ``status``; ``None`` when it changes nothing.

    ``screened`` says whether the payment already has its screening decision.
    """
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}")
    if status in TERMINAL:
        return None
    if signal == "ledger.posted":
        return Transition("succeeded", None, "payment.succeeded", "payment.succeeded")
    if signal == "ledger.rejected":
        return Transition("failed", failure_code or "ledger_rejected", "payment.failed", "payment.failed")
    if signal in SCREENINGS:
        return None if screened else _screen(status, SCREENINGS[signal])
    if signal == "review.approved":
        if status == "requires_review":
            return Transition("processing", None, None, "payment.review_approved")
        return None
    # review.declined: a reviewer's (or a re-screen's) decline is final.
    return Transition("declined", "fraud_declined", "payment.declined", "payment.declined")


def _screen(status: Status, screening: Screening) -> Transition | None:
    """The first screening decision of a payment."""
    if screening == "approve":  # nothing to show yet: the payment waits for the ledger
        return Transition(status, None, None, None, screening)
    if screening == "decline":
        return Transition("declined", "fraud_declined", "payment.declined", "payment.declined", screening)
    if status != "processing":
        return None
    timeline = "payment.screening_deadline" if screening == "deadline" else "payment.requires_review"
    return Transition("requires_review", None, "payment.requires_review", timeline, screening)


def is_terminal(status: str) -> bool:
    return status in TERMINAL
