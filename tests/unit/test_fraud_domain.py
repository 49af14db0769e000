"""Fraud rules: limits, the review band, velocity, and how decisions combine."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from paystream.fraud.domain import (
    AmountLimit,
    Decision,
    Facts,
    Hit,
    Outcome,
    ReviewBand,
    VelocityLimit,
    decide,
    default_rules,
    needs_rescreen,
    rescreen_delay,
    rescreen_step,
)

LIMIT = 100_000
THRESHOLD = 50_000
VELOCITY = 5


def _facts(amount: int = 1_000, recent_payments: int | None = 0) -> Facts:
    return Facts(amount=amount, currency="USD", kind="transfer", recent_payments=recent_payments)


def _rules() -> tuple[object, ...]:
    return default_rules(amount_limit=LIMIT, review_threshold=THRESHOLD, velocity_limit=VELOCITY)


@dataclass(frozen=True)
class Always:
    """A rule that always says ``outcome`` for ``reason``."""

    outcome: Outcome
    reason: str

    def evaluate(self, facts: Facts) -> Hit | None:
        return Hit(self.outcome, self.reason)


# Amount limit.


def test_amount_above_limit_is_declined() -> None:
    assert AmountLimit(LIMIT).evaluate(_facts(LIMIT + 1)) == Hit("decline", "amount_over_limit")


def test_amount_equal_to_limit_is_not_declined_by_the_limit() -> None:
    assert AmountLimit(LIMIT).evaluate(_facts(LIMIT)) is None


# Review band: threshold <= amount <= limit, both ends inclusive.


def test_amount_just_below_review_threshold_is_not_reviewed() -> None:
    assert ReviewBand(THRESHOLD, LIMIT).evaluate(_facts(THRESHOLD - 1)) is None


def test_amount_equal_to_review_threshold_is_reviewed() -> None:
    band = ReviewBand(THRESHOLD, LIMIT)
    assert band.evaluate(_facts(THRESHOLD)) == Hit("review", "amount_in_review_band")


def test_amount_equal_to_band_limit_is_reviewed() -> None:
    band = ReviewBand(THRESHOLD, LIMIT)
    assert band.evaluate(_facts(LIMIT)) == Hit("review", "amount_in_review_band")


def test_amount_above_band_limit_is_not_reviewed_by_the_band() -> None:
    assert ReviewBand(THRESHOLD, LIMIT).evaluate(_facts(LIMIT + 1)) is None


# Velocity.


def test_velocity_at_limit_passes() -> None:
    assert VelocityLimit(VELOCITY).evaluate(_facts(recent_payments=VELOCITY)) is None


def test_velocity_over_limit_is_declined() -> None:
    hit = VelocityLimit(VELOCITY).evaluate(_facts(recent_payments=VELOCITY + 1))
    assert hit == Hit("decline", "velocity_exceeded")


def test_unknown_velocity_sends_the_payment_to_review() -> None:
    hit = VelocityLimit(VELOCITY).evaluate(_facts(recent_payments=None))
    assert hit == Hit("review", "velocity_unavailable")


@given(amount=st.integers(min_value=1, max_value=10 * LIMIT))
def test_unknown_velocity_never_approves_whatever_the_amount(amount: int) -> None:
    decision = decide(_rules(), _facts(amount, recent_payments=None))  # type: ignore[arg-type]
    assert decision.outcome != "approve"


# The default rule set, end to end.


def test_small_payment_with_low_velocity_is_approved_with_no_reasons() -> None:
    assert decide(_rules(), _facts(THRESHOLD - 1, 0)) == Decision("approve", ())  # type: ignore[arg-type]


def test_payment_at_the_amount_limit_is_reviewed_not_declined() -> None:
    decision = decide(_rules(), _facts(LIMIT, 0))  # type: ignore[arg-type]
    assert decision == Decision("review", ("amount_in_review_band",))


def test_payment_over_the_amount_limit_is_declined() -> None:
    decision = decide(_rules(), _facts(LIMIT + 1, 0))  # type: ignore[arg-type]
    assert decision == Decision("decline", ("amount_over_limit",))


# How hits combine.


def test_no_rules_approve() -> None:
    assert decide([], _facts()) == Decision("approve", ())


def test_decline_beats_review() -> None:
    decision = decide([Always("review", "r"), Always("decline", "d")], _facts())
    assert decision.outcome == "decline"


def test_review_beats_approve() -> None:
    decision = decide([Always("approve", "a"), Always("review", "r")], _facts())
    assert decision.outcome == "review"


def test_decline_beats_review_whatever_the_rule_order() -> None:
    decision = decide([Always("decline", "d"), Always("review", "r")], _facts())
    assert decision.outcome == "decline"


def test_every_reason_for_the_winning_outcome_is_kept_in_rule_order() -> None:
    decision = decide(
        _rules(), _facts(LIMIT + 1, recent_payments=VELOCITY + 1)  # type: ignore[arg-type]
    )
    assert decision == Decision("decline", ("amount_over_limit", "velocity_exceeded"))


def test_reasons_of_weaker_hits_are_kept_too() -> None:
    # `decide` promises "the strictest outcome wins and every reason is kept": a payment
    # declined for its amount must still record that velocity could not be counted.
    decision = decide(_rules(), _facts(LIMIT + 1, recent_payments=None))  # type: ignore[arg-type]
    assert decision.outcome == "decline"
    assert set(decision.reasons) == {"amount_over_limit", "velocity_unavailable"}


outcomes = st.sampled_from(["approve", "review", "decline"])


@given(hits=st.lists(st.tuples(outcomes, st.text(min_size=1, max_size=8)), min_size=1))
def test_decision_is_the_strictest_hit(hits: list[tuple[Outcome, str]]) -> None:
    rank = {"approve": 0, "review": 1, "decline": 2}
    decision = decide([Always(o, r) for o, r in hits], _facts())
    assert decision.outcome == max((o for o, _ in hits), key=rank.__getitem__)


def test_a_refund_is_approved_without_rules_even_above_every_limit() -> None:
    rules = default_rules(amount_limit=1_000, review_threshold=500, velocity_limit=1)
    decision = decide(rules, Facts(amount=10_000, currency="USD", kind="refund", recent_payments=None))
    assert decision == Decision("approve", ("refund",))


# Re-screening reviews opened only because a dependency was away.


def test_reviews_opened_only_for_an_absent_dependency_are_rescreened() -> None:
    assert needs_rescreen(["screening_deadline"])
    assert needs_rescreen(["velocity_unavailable"])
    assert needs_rescreen(["screening_deadline", "velocity_unavailable"])


def test_reviews_with_a_risk_reason_are_for_a_human() -> None:
    assert not needs_rescreen(["amount_in_review_band", "velocity_unavailable"])
    assert not needs_rescreen([])


def test_a_rescreen_the_rules_approve_approves() -> None:
    assert rescreen_step(decide(_rules(), _facts(1_000, recent_payments=1))) == "approve"


def test_a_rescreen_the_rules_decline_declines() -> None:
    assert rescreen_step(decide(_rules(), _facts(1_000, recent_payments=VELOCITY + 1))) == "decline"


def test_a_rescreen_in_the_review_band_goes_to_a_human() -> None:
    assert rescreen_step(decide(_rules(), _facts(THRESHOLD, recent_payments=1))) == "human"


def test_a_rescreen_in_the_review_band_goes_to_a_human_even_without_velocity() -> None:
    assert rescreen_step(decide(_rules(), _facts(THRESHOLD, recent_payments=None))) == "human"


def test_a_rescreen_while_velocity_is_still_away_is_retried() -> None:
    assert rescreen_step(decide(_rules(), _facts(1_000, recent_payments=None))) == "retry"


def test_a_rescreen_never_approves_without_velocity() -> None:
    assert rescreen_step(decide(_rules(), _facts(1, recent_payments=None))) != "approve"


def test_rescreen_backoff_doubles_up_to_its_cap() -> None:
    delays = [rescreen_delay(n, base=1.0, cap=10.0) for n in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert rescreen_delay(10_000, base=1.0, cap=10.0) == 10.0
