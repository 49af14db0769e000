"""The shipped model does not depend on the hour: the same honest cohort and the same attacks, started at
every UTC hour (and under several local time zones of the machine), are screened alike.

Before the features were made relative to each account's own rhythm, the merchant payments of this cohort
all went through between 07:00 and 20:00 UTC and none between 23:00 and 06:59 (docs/fraud-model.md).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from paystream.fraud.model import default_model_path, load
from paystream.fraud.probe import approved_share, honest_cohort, hour_table, outcomes_by_part, screen
from paystream.fraud.train import service_rules

# Stated rates (docs/fraud-model.md, "Hour independence"), at every hour:
MERCHANT_PASS = 0.95  # the cohort's payment to a merchant 65 s after funding
FRIEND_PASS_AT_HONEST_PACE = 0.9  # a second payment, to a friend, 65-80 s after the first
FRIEND_PASS_WITHIN_A_MINUTE = 0.3  # the same 40-60 s after the first (the model reviews part of these)
DAY = int(datetime(2026, 12, 7, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def machine_zone() -> Iterator[None]:
    before = os.environ.get("TZ")
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_honest_cohorts_go_through_and_attacks_are_stopped_at_every_utc_hour_alike() -> None:
    model, rules = load(default_model_path()), service_rules()
    rows = hour_table(model, rules, DAY)
    for row in rows:
        print(f"{row.hour:02d}:17 UTC  merchant {row.merchant:.3f}  friend (40-60 s) {row.friend:.3f}  "
              f"card testing let through {row.card_testing:.3f}  takeover let through {row.takeover:.3f}")
    assert len({(r.merchant, r.friend, r.card_testing, r.takeover) for r in rows}) == 1, "the hour changed a decision"
    assert min(r.merchant for r in rows) >= MERCHANT_PASS
    assert min(r.friend for r in rows) >= FRIEND_PASS_WITHIN_A_MINUTE
    assert max(r.card_testing for r in rows) == 0.0
    assert max(r.takeover for r in rows) == 0.0


@pytest.mark.parametrize("hour", [0, 3, 7, 12, 18, 22])
def test_a_cohort_at_an_honest_pace_goes_through_whatever_the_hour(hour: int) -> None:
    model, rules = load(default_model_path()), service_rules()
    probe = honest_cohort(DAY + hour * 3_600_000 + 41 * 60_000, random.Random(hour), friend=True,
                          friend_after=(65, 80))
    counts = outcomes_by_part(probe, screen(probe, model, rules))
    merchant, friend = approved_share(counts["merchant"]), approved_share(counts["friend"])
    print(f"\n{hour:02d}:41 UTC: merchant {merchant:.3f}, friend {friend:.3f}")
    assert merchant >= MERCHANT_PASS and friend >= FRIEND_PASS_AT_HONEST_PACE


@pytest.mark.usefixtures("machine_zone")
def test_the_machines_time_zone_changes_nothing() -> None:
    model, rules = load(default_model_path()), service_rules()
    probe = honest_cohort(DAY + 2 * 3_600_000, random.Random(5), friend=True)
    seen = []
    for zone in ("UTC", "America/Los_Angeles", "Asia/Kolkata", "Pacific/Auckland"):
        os.environ["TZ"] = zone
        time.tzset()
        seen.append([(d.outcome, d.reasons) for d in screen(probe, model, rules)])
    assert all(s == seen[0] for s in seen[1:])
