"""Fraud rules, pure: facts about a payment in, a decision with its reasons out.

Decline beats review beats approve. A fact that could not be established in time
(``None``) never approves: the payment goes to a human.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Outcome = Literal["approve", "decline", "review"]
_RANK = {"approve": 0, "review": 1, "decline": 2}


@dataclass(frozen=True, slots=True)
class Facts:
    """What the rules look at. ``recent_payments`` is None when it could not be counted."""

    amount: int
    currency: str
    kind: str
    recent_payments: int | None


@dataclass(frozen=True, slots=True)
class Hit:
    outcome: Outcome
    reason: str


class Rule(Protocol):
    """One rule: a hit when it has something to say, else None."""

    def evaluate(self, facts: Facts) -> Hit | None: ...


@dataclass(frozen=True, slots=True)
class AmountLimit:
    """Declines any payment above ``limit`` minor units."""

    limit: int

    def evaluate(self, facts: Facts) -> Hit | None:
        if facts.amount > self.limit:
            return Hit("decline", "amount_over_limit")
        return None


@dataclass(frozen=True, slots=True)
class ReviewBand:
    """Sends mid-risk amounts (``threshold`` ≤ amount ≤ ``limit``) to a human."""

    threshold: int
    limit: int

    def evaluate(self, facts: Facts) -> Hit | None:
        if self.threshold <= facts.amount <= self.limit:
            return Hit("review", "amount_in_review_band")
        return None


@dataclass(frozen=True, slots=True)
class VelocityLimit:
    """Declines an account's payments past ``limit`` within the counting window."""

    limit: int

    def evaluate(self, facts: Facts) -> Hit | None:
        if facts.recent_payments is None:
            return Hit("review", "velocity_unavailable")
        if facts.recent_payments > self.limit:
            return Hit("decline", "velocity_exceeded")
        return None


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reasons: tuple[str, ...]


def decide(rules: Sequence[Rule], facts: Facts) -> Decision:
    """Run every rule; the strictest outcome wins and every reason is kept.

    A refund returns money a screened payment moved, to where it came from: it is approved
    without rules (holding it for review would only keep the payer's money from them).
    """
    if facts.kind == "refund":
        return Decision("approve", ("refund",))
    hits = [hit for rule in rules if (hit := rule.evaluate(facts)) is not None]
    if not hits:
        return Decision("approve", ())
    outcome = max((hit.outcome for hit in hits), key=_RANK.__getitem__)
    ranked = sorted(hits, key=lambda hit: _RANK[hit.outcome], reverse=True)
    return Decision(outcome, tuple(hit.reason for hit in ranked))


def default_rules(
    *, amount_limit: int, review_threshold: int, velocity_limit: int
) -> tuple[Rule, ...]:
    """The rule set the service runs, from settings."""
    return (
        AmountLimit(amount_limit),
        ReviewBand(review_threshold, amount_limit),
        VelocityLimit(velocity_limit),
    )


# -- re-screening ---------------------------------------------------------------------------

DEPENDENCY_REASONS: frozenset[str] = frozenset({"screening_deadline", "velocity_unavailable"})
"""Reasons that say only that something the rules need was away, not that the payment is risky."""

RescreenStep = Literal["approve", "decline", "human", "retry"]


def needs_rescreen(reasons: Sequence[str]) -> bool:
    """A review opened only because a dependency was away: screen it again once it is back."""
    return bool(reasons) and all(reason in DEPENDENCY_REASONS for reason in reasons)


def rescreen_step(decision: Decision) -> RescreenStep:
    """What a re-screen's decision does to a review opened only because a dependency was away.

    The rules' answer now stands: an approval or a decline resolves the review as a
    reviewer's would; a review for a risk the rules see (e.g. the amount) goes to a human;
    a review that again says only that a dependency is away is tried again later.
    """
    if decision.outcome == "approve":
        return "approve"
    if decision.outcome == "decline":
        return "decline"
    if needs_rescreen(decision.reasons):
        return "retry"
    return "human"


def rescreen_delay(attempts: int, *, base: float, cap: float) -> float:
    """Seconds until the next re-screen after ``attempts`` tries: doubling from ``base``, at most ``cap``."""
    return float(min(cap, base * 2 ** min(attempts, 30)))


# -- the model beside the rules -------------------------------------------------------------

ModelMode = Literal["off", "shadow", "on"]


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Model scores (probabilities of fraud) at and above which a payment goes to review, or is declined."""

    review: float
    decline: float

    def outcome(self, score: float) -> Outcome:
        if score >= self.decline:
            return "decline"
        if score >= self.review:
            return "review"
        return "approve"


@dataclass(frozen=True, slots=True)
class ModelScore:
    """What the model said of one payment: its score, version, and the features that pushed it up most."""

    score: float
    version: str
    thresholds: Thresholds
    top_features: tuple[str, ...] = ()

    @property
    def outcome(self) -> Outcome:
        return self.thresholds.outcome(self.score)


def combine(rules: Decision, model: ModelScore | None) -> Decision:
    """The rules and the model together: the stricter outcome wins.

    The rules are a floor the model cannot lower: what they review or decline stays so
    (a missing model, ``None``, leaves the rules' decision as it is). Inside the rules'
    approval the score decides, by the thresholds. When the model raises or shares the
    outcome, its reason (``model_review`` / ``model_decline``) and the features that pushed
    the score up (``risk:<feature>``) follow the rules' reasons. Refunds stay approved.
    """
    if model is None or rules.reasons == ("refund",):
        return rules
    said = model.outcome
    if said == "approve":
        return rules
    outcome = max(rules.outcome, said, key=_RANK.__getitem__)
    codes = (f"model_{said}", *(f"risk:{name}" for name in model.top_features))
    return Decision(outcome, (*rules.reasons, *codes))
