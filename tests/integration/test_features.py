"""The fraud features online (the Lua script on a real Redis) equal the offline replay, to the bit."""

from __future__ import annotations

from typing import Any

from paystream.fraud.features import FeatureState, OnlineFeatures, PaymentFacts, replay, vector
from paystream.fraud.simulate import simulate
from paystream.fraud.train import facts_of_sim


async def test_online_features_equal_the_offline_replay_of_the_same_history(redis_client: Any, uid: str) -> None:
    history = [facts_of_sim(p) for p in simulate(seed=21, days=6, users=60)]
    assert len(history) > 500
    online = OnlineFeatures(redis_client, prefix=f"{uid}:f")
    got: list[list[float]] = []
    for start in range(0, len(history), 97):
        batch = history[start:start + 97]
        got.extend(vector(raw, facts) for raw, facts in zip(await online.record(batch), batch, strict=True))
    assert got == replay(history)


async def test_a_payment_recorded_again_gets_its_first_features_and_changes_nothing(
    redis_client: Any, uid: str
) -> None:
    online = OnlineFeatures(redis_client, prefix=f"{uid}:f")
    offline = FeatureState()
    first = PaymentFacts("p1", 1_000_000, "a", "b", 1_200, is_deposit=False)
    second = PaymentFacts("p2", 1_010_000, "a", "c", 900, is_deposit=False)
    raws = await online.record([first, second])
    assert await online.record([first, second]) == raws
    assert [offline.update(first), offline.update(second), offline.update(first)] == [*raws, raws[0]]
    assert raws[1].velocity_1m == 2 and raws[1].counterparty_new == 1 and raws[1].history == 1
