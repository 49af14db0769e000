"""The pure parts of `paystream gameday`: what it refuses before starting, and the figures it
derives from what it recorded (stuck payments, per-second rows, counter increases, lag)."""

from __future__ import annotations

from pathlib import Path

import pytest

from paystream.tools.gameday import GamedayOptions, check_options, fresh_stack_env
from paystream.tools.gameday_stack import GamedayError, Sampler, StackHandle, Timeline
from paystream.tools.gameday_verdict import per_second, stuck_in_processing
from paystream.tools.load_results import LoadResult, PaymentSpec, Tracked


def _tracked(sent: float, answered: float | None, terminal: float | None = None,
             review: float | None = None) -> Tracked:
    t = Tracked(PaymentSpec(destination="acc_b", source="acc_a", amount=100))
    t.sent_at, t.answered_at, t.terminal_at, t.review_at = sent, answered, terminal, review
    t.payment_id = f"pay_{sent}"
    return t


@pytest.mark.parametrize(("options", "says"), [
    (GamedayOptions(scenario="nope", fresh=True), "unknown scenario 'nope'"),
    (GamedayOptions(scenario="kill", fresh=True, rate=0), "--rate must be a positive number"),
    (GamedayOptions(scenario="kill", fresh=True, rate=float("nan")), "--rate must be a positive number"),
    (GamedayOptions(scenario="kill", fresh=True, minutes=0), "--minutes must be above 0"),
    (GamedayOptions(scenario="kill", fresh=True, kill_every=0), "--kill-every must be a positive"),
    (GamedayOptions(scenario="kill", scale="payments=2"), "--scale sets up a stack: it needs --fresh"),
    (GamedayOptions(scenario="kill", fresh=True, scale="payments=0"), "payments needs at least 1 copy"),
    (GamedayOptions(scenario="kill", fresh=True, nats_nodes=2), "--nats-cluster takes 1, 3 or 5"),
    (GamedayOptions(scenario="kill", fresh=True, screening_deadline=-1), "--screening-deadline must be 0"),
])
def test_bad_options_are_refused_before_anything_starts(options: GamedayOptions, says: str) -> None:
    with pytest.raises(GamedayError, match=says.replace("(", r"\(")):
        check_options(options)


def test_nats_node_gets_a_three_node_cluster_and_refuses_one() -> None:
    assert fresh_stack_env(GamedayOptions(scenario="nats-node", fresh=True))["PAYSTREAM_NATS_CLUSTER"] == "3"
    with pytest.raises(GamedayError, match="nats-node needs a NATS cluster"):
        fresh_stack_env(GamedayOptions(scenario="nats-node", fresh=True, nats_nodes=1))
    env = fresh_stack_env(GamedayOptions(scenario="fraud-slow", fresh=True, screening_deadline=0))
    assert env["PAYSTREAM_SCREENING_DEADLINE_SECONDS"] == "0"


def test_a_home_without_a_stack_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GamedayError, match="no running stack"):
        StackHandle(tmp_path)


def test_the_fault_takes_the_middle_third() -> None:
    assert GamedayOptions(scenario="kill", minutes=3).window == (60.0, 120.0)


def test_stuck_counts_payments_in_processing_longer_than_three_seconds() -> None:
    tracked = [
        _tracked(0.0, 0.01, terminal=10.0),   # processing from 0 to 10: stuck from 3 on
        _tracked(0.0, 0.01, review=2.5),      # to review within the deadline: never stuck
        _tracked(1.0, 1.01, terminal=3.5),    # done in 2.5 s: never stuck
        _tracked(2.0, None),                  # refused by the API: not a payment
        _tracked(4.0, 4.01),                  # never ended: stuck from 7 on
    ]
    assert stuck_in_processing(tracked, 0.0, 0, 5) == 1
    assert stuck_in_processing(tracked, 0.0, 7, 9) == 2
    assert stuck_in_processing(tracked, 0.0, 11, 12) == 1


def test_per_second_rows_count_offered_accepted_and_completed_with_their_p99() -> None:
    tracked = [_tracked(100.2, 100.3, terminal=101.5), _tracked(100.6, 101.1, terminal=101.9),
               _tracked(101.0, None)]
    result = LoadResult(tracked=tracked, submit_seconds=1.0, first_sent=100.0, polls=0, reviews_decided=0)
    rows = per_second(result, 100.0, 2.0)
    assert [(r["offered"], r["accepted"], r["completed"]) for r in rows] == [(2, 1, 0), (1, 1, 2), (0, 0, 0)]
    assert rows[0]["api_p99_ms"] == 100.0
    assert rows[1]["e2e_p99_ms"] == pytest.approx(1300.0)
    assert rows[2]["api_p99_ms"] is None


def test_counter_increase_survives_a_restart_and_lag_is_summed_over_consumers() -> None:
    sampler = Sampler(None, Timeline())  # type: ignore[arg-type]  # no stack: nothing is scraped
    sampler._add("paystream_screening_deadline_total", {"instance": "payments"}, 0.0, 5.0)
    sampler._add("paystream_screening_deadline_total", {"instance": "payments"}, 1.0, 9.0)
    sampler._add("paystream_screening_deadline_total", {"instance": "payments"}, 2.0, 2.0)  # restarted
    sampler._add("paystream_screening_deadline_total", {"instance": "payments-2"}, 0.0, 1.0)
    sampler._add("paystream_screening_deadline_total", {"instance": "payments-2"}, 1.0, 4.0)
    assert sampler.increase("paystream_screening_deadline_total") == 4 + 2 + 3
    for instance in ("fraud", "fraud-2"):  # both copies report the whole consumer's lag
        sampler._add("paystream_consumer_lag", {"instance": instance, "consumer": "fraud"}, 1.0, 7.0)
    sampler._add("paystream_consumer_lag", {"instance": "ledger", "consumer": "ledger"}, 1.0, 3.0)
    sampler._add("paystream_consumer_lag", {"instance": "ledger", "consumer": "ledger"}, 2.0, 0.0)
    assert sampler.lag_by_tick() == [(1.0, 10.0), (2.0, 0.0)]
    assert sampler.lag_at_end() == {}  # ledger's 0 at the last tick; fraud reported none there


def test_lag_at_end_names_the_consumers_still_waiting() -> None:
    sampler = Sampler(None, Timeline())  # type: ignore[arg-type]  # no stack: nothing is scraped
    for at, fraud, ledger in ((1.0, 4.0, 2.0), (2.0, 3.0, 0.0)):
        sampler._add("paystream_consumer_lag", {"instance": "fraud", "consumer": "fraud"}, at, fraud)
        sampler._add("paystream_consumer_lag", {"instance": "ledger", "consumer": "ledger"}, at, ledger)
    assert sampler.lag_at_end() == {"fraud": 3.0}
