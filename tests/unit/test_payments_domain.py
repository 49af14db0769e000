"""The payment state machine: transitions, absorbing terminal states, any signal order."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.contracts.envelope import Envelope
from paystream.payments.domain import (
    SCREENINGS,
    SIGNALS,
    TERMINAL,
    Signal,
    Status,
    Transition,
    is_terminal,
    next_state,
)
from paystream.payments.handlers import signal_of

STATUSES: tuple[Status, ...] = ("processing", "requires_review", "succeeded", "failed", "declined")
ALL_SIGNALS: tuple[Signal, ...] = tuple(sorted(cast("set[Signal]", SIGNALS)))
TERMINALS: tuple[Status, ...] = tuple(s for s in STATUSES if s in TERMINAL)


def _run(signals: list[Signal]) -> list[Status]:
    """Feed ``signals`` to a new payment; the statuses it passes through, starting one."""
    status: Status = "processing"
    screened = False
    history = [status]
    for signal in signals:
        transition = next_state(status, signal, screened=screened)
        if transition is not None:
            screened = screened or transition.screening is not None
            if transition.status != status:
                history.append(transition.status)
            status = transition.status
    return history


# The transitions drawn in the module docstring.


def test_review_from_processing_requires_review() -> None:
    assert next_state("processing", "fraud.review") == Transition(
        "requires_review", None, "payment.requires_review", "payment.requires_review", "review"
    )


def test_the_screening_deadline_sends_a_processing_payment_to_review() -> None:
    assert next_state("processing", "screening.deadline") == Transition(
        "requires_review", None, "payment.requires_review", "payment.screening_deadline", "deadline"
    )


def test_review_approval_under_review_returns_to_processing_without_a_public_event() -> None:
    assert next_state("requires_review", "review.approved", screened=True) == Transition(
        "processing", None, None, "payment.review_approved"
    )


def test_decline_from_processing_declines() -> None:
    assert next_state("processing", "fraud.declined") == Transition(
        "declined", "fraud_declined", "payment.declined", "payment.declined", "decline"
    )


def test_review_decline_under_review_declines() -> None:
    assert next_state("requires_review", "review.declined", screened=True) == Transition(
        "declined", "fraud_declined", "payment.declined", "payment.declined"
    )


def test_ledger_posted_from_processing_succeeds() -> None:
    assert next_state("processing", "ledger.posted") == Transition(
        "succeeded", None, "payment.succeeded", "payment.succeeded"
    )


def test_ledger_rejected_from_processing_fails_with_the_ledger_code() -> None:
    assert next_state("processing", "ledger.rejected", "insufficient_funds") == Transition(
        "failed", "insufficient_funds", "payment.failed", "payment.failed"
    )


def test_ledger_rejected_without_a_code_fails_as_ledger_rejected() -> None:
    transition = next_state("processing", "ledger.rejected")
    assert transition is not None
    assert transition.failure_code == "ledger_rejected"


# What changes nothing.


def test_approval_while_processing_only_records_the_screening() -> None:
    assert next_state("processing", "fraud.approved") == Transition(
        "processing", None, None, None, "approve"
    )


def test_review_approval_while_processing_changes_nothing() -> None:
    assert next_state("processing", "review.approved", screened=True) is None


# First screening decision wins: a screening decision after another changes nothing.


@pytest.mark.parametrize("first", sorted(SCREENINGS))
@pytest.mark.parametrize("second", sorted(SCREENINGS))
def test_a_second_screening_decision_changes_nothing(first: Signal, second: Signal) -> None:
    transition = next_state("processing", first)
    assert transition is not None and transition.screening == SCREENINGS[first]
    if is_terminal(transition.status):
        return
    assert next_state(transition.status, second, screened=True) is None


def test_fraud_approval_after_the_deadline_leaves_the_payment_in_review() -> None:
    assert _run(["screening.deadline", "fraud.approved"]) == ["processing", "requires_review"]


def test_fraud_decline_after_the_deadline_leaves_the_payment_in_review() -> None:
    assert _run(["screening.deadline", "fraud.declined"]) == ["processing", "requires_review"]


def test_the_deadline_after_fraud_approved_changes_nothing() -> None:
    assert _run(["fraud.approved", "screening.deadline"]) == ["processing"]


def test_a_reviewer_approval_after_the_deadline_continues_the_payment() -> None:
    assert _run(["screening.deadline", "fraud.approved", "review.approved", "ledger.posted"]) == [
        "processing", "requires_review", "processing", "succeeded"
    ]


def test_a_reviewer_decline_after_the_deadline_declines() -> None:
    assert _run(["screening.deadline", "fraud.approved", "review.declined"]) == [
        "processing", "requires_review", "declined"
    ]


@pytest.mark.parametrize("status", [s for s in STATUSES if s != "processing"])
def test_review_is_entered_only_from_processing(status: Status) -> None:
    transition = next_state(status, "fraud.review")
    assert transition is None or transition.status != "requires_review"


@pytest.mark.parametrize("status", TERMINALS)
@pytest.mark.parametrize("signal", ALL_SIGNALS)
def test_terminal_state_absorbs_every_signal(status: Status, signal: Signal) -> None:
    assert next_state(status, signal) is None


def test_unknown_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown signal"):
        next_state("processing", "fraud.maybe")  # type: ignore[arg-type]


def test_is_terminal_names_exactly_succeeded_failed_declined() -> None:
    assert [s for s in STATUSES if is_terminal(s)] == ["succeeded", "failed", "declined"]


# The ledger and fraud streams are not ordered relative to each other, so the ledger's
# outcome may arrive while payments still shows the review: the money has moved (or
# not), so the payment settles.


def test_ledger_posted_under_review_succeeds() -> None:
    transition = next_state("requires_review", "ledger.posted")
    assert transition is not None
    assert transition.status == "succeeded"


def test_ledger_rejected_under_review_fails() -> None:
    transition = next_state("requires_review", "ledger.rejected", "insufficient_funds")
    assert transition is not None
    assert transition.status == "failed"


# Any sequence of signals, including repeats and any order.

signal_sequences = st.lists(st.sampled_from(ALL_SIGNALS), max_size=30)


@given(signals=signal_sequences)
def test_any_signal_sequence_reaches_at_most_one_terminal_state(signals: list[Signal]) -> None:
    history = _run(signals)
    assert sum(1 for status in history if is_terminal(status)) <= 1


@given(signals=signal_sequences)
def test_once_terminal_a_payment_never_leaves_that_state(signals: list[Signal]) -> None:
    status: Status = "processing"
    terminal: Status | None = None
    for signal in signals:
        transition = next_state(status, signal)
        if transition is not None:
            status = transition.status
        if terminal is not None:
            assert status == terminal
        elif is_terminal(status):
            terminal = status


@given(signals=signal_sequences)
def test_requires_review_is_only_ever_entered_from_processing(signals: list[Signal]) -> None:
    history = _run(signals)
    for before, after in itertools.pairwise(history):
        if after == "requires_review":
            assert before == "processing"


@given(signals=signal_sequences)
def test_review_approval_under_review_always_returns_to_processing(signals: list[Signal]) -> None:
    status: Status = "processing"
    screened = False
    for signal in signals:
        transition = next_state(status, signal, screened=screened)
        if status == "requires_review" and signal == "review.approved":
            assert transition is not None
            assert transition.status == "processing"
        if transition is not None:
            status = transition.status
            screened = screened or transition.screening is not None


@given(signals=signal_sequences)
def test_a_payment_records_at_most_one_screening_decision(signals: list[Signal]) -> None:
    status: Status = "processing"
    screened = False
    recorded = 0
    for signal in signals:
        transition = next_state(status, signal, screened=screened)
        if transition is not None:
            if transition.screening is not None:
                recorded += 1
                screened = True
            status = transition.status
    assert recorded <= 1


SETTLES: dict[Signal, Status] = {
    "ledger.posted": "succeeded",
    "ledger.rejected": "failed",
    "review.declined": "declined",
}


def _settling(signals: list[Signal]) -> list[Status]:
    """What each signal would settle the payment as: an automatic decline only when it is
    the payment's first screening decision."""
    first_screening = next((s for s in signals if s in SCREENINGS), None)
    out: list[Status] = []
    for signal in signals:
        if signal in SETTLES:
            out.append(SETTLES[signal])
        elif signal == "fraud.declined" and first_screening == "fraud.declined":
            out.append("declined")
    return out


@given(signals=signal_sequences)
def test_the_first_settling_signal_chooses_the_terminal_state(signals: list[Signal]) -> None:
    first = next(iter(_settling(signals)), None)
    final = _run(signals)[-1]
    if first is None:
        assert not is_terminal(final)
    else:
        assert final == first


# Which signal an event carries: a fraud outcome naming a review resolves it.


def _event(kind: str, **payload: object) -> Envelope:
    return Envelope(id="evt_1", type=kind, version=1, occurred_at=datetime.now(UTC),
                    partition_key="acc_1", correlation_id="pay_1", causation_id=None,
                    payload=dict(payload))


@pytest.mark.parametrize(("kind", "review_id", "signal"), [
    ("fraud.approved", None, "fraud.approved"),
    ("fraud.approved", "rev_1", "review.approved"),
    ("fraud.declined", None, "fraud.declined"),
    ("fraud.declined", "rev_1", "review.declined"),
    ("fraud.review", "rev_1", "fraud.review"),
    ("ledger.posted", None, "ledger.posted"),
    ("payment.succeeded", None, None),
])
def test_fraud_outcomes_naming_a_review_are_resolutions(
    kind: str, review_id: str | None, signal: str | None
) -> None:
    assert signal_of(_event(kind, review_id=review_id)) == signal
