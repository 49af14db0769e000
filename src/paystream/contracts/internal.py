"""Bodies of internal routes that one service calls on another (not through the gateway).

Pure data, versioned like events: adding an optional field keeps a route compatible.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from paystream.contracts.events import PaymentOrder


class DeadlineReview(msgspec.Struct, frozen=True, kw_only=True):
    """A review payments opened when fraud had not screened a payment by its deadline."""

    id: str
    payment: PaymentOrder
    created_at: datetime


class DeadlineReviews(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/reviews/deadline`` on fraud: payments hands these to the review queue."""

    reviews: list[DeadlineReview]


class DecisionLookup(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/decisions/lookup`` on fraud: which of these payments has it screened?"""

    payment_ids: list[str]


class DecisionsFound(msgspec.Struct, frozen=True, kw_only=True):
    """The answer: the payments fraud has a decision for (its event may still be on the way)."""

    decided: list[str]
