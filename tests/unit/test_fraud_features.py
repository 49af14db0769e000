"""The fraud features offline: no feature reads the absolute hour; the time of day counts only against the
account's own rhythm (the online twin is held to these same vectors in tests/integration/test_features.py)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest

from paystream.fraud.features import DAY_MS, FEATURES, HOUR_MS, MINUTE_MS, FeatureState, PaymentFacts, replay, vector
from paystream.fraud.simulate import START, simulate
from paystream.fraud.train import facts_of_sim

OFFSET, RHYTHM, OFF_SHARE = (FEATURES.index(name) for name in ("hour_offset", "rhythm", "off_rhythm_share"))


def test_moving_a_whole_history_to_another_time_zone_leaves_every_feature_unchanged() -> None:
    history = [facts_of_sim(p) for p in simulate(seed=8, days=5, users=40)]
    expected = replay(history)
    for hours in (1, 5, 9, 13, 17.5, 23):
        shifted = replay(replace(f, at_ms=f.at_ms + int(hours * HOUR_MS)) for f in history)
        assert len(shifted) == len(expected)
        for got, want in zip(shifted, expected, strict=True):
            assert got == pytest.approx(want, abs=1e-9), hours


@pytest.mark.parametrize("hour", range(0, 24, 3))
def test_a_new_accounts_first_payment_has_no_wrong_hour(hour: int) -> None:
    state = FeatureState()
    at = START + hour * HOUR_MS
    state.update(PaymentFacts("d1", at, "a", None, 50_000, is_deposit=True))
    first = PaymentFacts("p1", at + MINUTE_MS, "a", "m", 1_500, is_deposit=False)
    row = vector(state.update(first), first)
    assert (row[OFFSET], row[RHYTHM], row[OFF_SHARE]) == (0.0, 0.0, 0.0)


def test_a_payment_far_from_the_accounts_own_rhythm_is_measured_from_it() -> None:
    state = FeatureState()
    for day in range(10):  # every day at 13:00, a daytime user (in whatever zone)
        at = START + day * DAY_MS + 13 * HOUR_MS
        state.update(PaymentFacts(f"p{day}", at, "a", "m", 1_500, is_deposit=False))
    usual = PaymentFacts("usual", START + 10 * DAY_MS + 14 * HOUR_MS, "a", "m", 1_500, is_deposit=False)
    night = PaymentFacts("night", START + 10 * DAY_MS + 3 * HOUR_MS, "a", "x", 1_500, is_deposit=False)
    usual_row = vector(copy.deepcopy(state).update(usual), usual)
    night_row = vector(state.update(night), night)
    assert usual_row[OFFSET] == pytest.approx(1.0) and night_row[OFFSET] == pytest.approx(10.0)
    assert night_row[RHYTHM] == pytest.approx(1.0) and night_row[OFF_SHARE] == 0.0
    after = PaymentFacts("after", night.at_ms + MINUTE_MS, "a", "x", 1_500, is_deposit=False)
    assert vector(state.update(after), after)[OFF_SHARE] == pytest.approx(0.1)  # one of ten off rhythm

