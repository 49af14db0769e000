"""How the demo and the scale-out e2e judge a review scenario's payment: by the decision our
reviewer sent, when the API's answer to it was lost (a gateway copy died after deciding)."""

from __future__ import annotations

from paystream.tools.demo import scenario_problem
from paystream.tools.load_results import PaymentSpec, Tracked


def _reviewed(status: str, *, approved: bool | None = None, sent: bool | None = None) -> Tracked:
    tracked = Tracked(spec=PaymentSpec(destination="acc_b", amount=50_000, source="acc_a", scenario="review"),
                      sent_at=0.0)
    tracked.payment_id, tracked.status, tracked.terminal_at = "pay_1", status, 1.0
    tracked.review_approved, tracked.review_sent = approved, sent
    return tracked


def test_a_review_ends_as_our_reviewer_decided_even_when_the_answer_was_lost() -> None:
    assert scenario_problem("review", [_reviewed("succeeded", approved=True)]) is None
    assert scenario_problem("review", [_reviewed("succeeded", sent=True)]) is None
    assert scenario_problem("review", [_reviewed("declined", sent=False)]) is None


def test_a_review_nobody_of_ours_decided_or_decided_otherwise_is_named() -> None:
    problem = scenario_problem("review", [_reviewed("succeeded")])
    assert problem is not None and "pay_1=succeeded" in problem
    problem = scenario_problem("review", [_reviewed("succeeded", approved=False)])
    assert problem is not None and "pay_1=succeeded review declined" in problem
    problem = scenario_problem("review", [_reviewed("declined", sent=True)])
    assert problem is not None and "review sent=True" in problem
