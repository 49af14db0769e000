"""`paystream bench --rate`: the open-loop schedule, lateness counted from each payment's due
time, the report line when the client could not keep up, and the bad input refused in one line.

The engine tests drive `LoadEngine` with fake senders that answer 202 ``succeeded`` after a
set delay (no stack, no network): what they check is the schedule's accounting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import httpx
import pytest

from paystream.tools.bench import BenchError, BenchOptions, check_bench_options
from paystream.tools.client import PaystreamClient
from paystream.tools.load import EngineOptions, LoadEngine
from paystream.tools.load_results import (
    LATE_AFTER_SECONDS,
    Lateness,
    LoadResult,
    PaymentSpec,
    RateSchedule,
    Tracked,
    lateness_of,
)
from paystream.tools.receiver import WebhookReceiver


class FakeSender:
    """Answers every POST 202 ``succeeded`` after ``delay`` seconds; notes when each was sent
    and how many it carried at once."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sent_at: dict[str, float] = {}  # Idempotency-Key → when the request began
        self.in_flight = 0
        self.most_in_flight = 0

    async def token(self) -> str:
        return "token"

    async def request(self, method: str, path: str, *, json_body: Any = None,
                      idempotency_key: str | None = None, **_: Any) -> httpx.Response:
        assert idempotency_key is not None
        self.sent_at[idempotency_key] = time.perf_counter()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return httpx.Response(202, json={"id": f"pay_{idempotency_key}", "status": "succeeded"})


class FakeReceiver:
    def subscribe(self, _: object) -> None: ...
    def unsubscribe(self, _: object) -> None: ...


def _specs(count: int, source: str = "acc_a") -> list[PaymentSpec]:
    return [PaymentSpec(source=source, destination="acc_z", amount=100, key=f"k{i:03}") for i in range(count)]


async def _run(specs: list[PaymentSpec], *, rate: float, cap: int, client: FakeSender,
               sender_of: Any = None) -> LoadResult:
    engine = LoadEngine(cast(PaystreamClient, client), cast(WebhookReceiver, FakeReceiver()),
                        EngineOptions(rate=rate, concurrency=cap), sender_of=sender_of)
    return await engine.run(specs)


def _tracked(due: float, late_by: float) -> Tracked:
    t = Tracked(PaymentSpec(source="acc_a", destination="acc_b", amount=100))
    t.sent_at, t.late_by = due, late_by
    return t


def test_payments_are_due_on_a_fixed_schedule_from_its_start() -> None:
    schedule = RateSchedule(rate=50.0, start=100.0)
    assert [schedule.due(i) for i in range(4)] == [100.0, 100.02, 100.04, 100.06]
    assert schedule.due(500) == pytest.approx(110.0)  # 500 at 50/s: 10 s in, whatever came before


def test_lateness_is_counted_from_the_due_time_above_the_threshold() -> None:
    tracked = [_tracked(0.0, 0.0), _tracked(0.1, 0.005), _tracked(0.2, LATE_AFTER_SECONDS),
               _tracked(0.3, 0.011), _tracked(0.4, 0.5)]
    lateness = lateness_of(tracked)
    assert LATE_AFTER_SECONDS == 0.010
    assert (lateness.scheduled, lateness.late) == (5, 2)  # 11 ms and 500 ms; exactly 10 ms is on time
    assert lateness.behind == 1  # only the 500 ms one is more than 100 ms late
    assert lateness.max_seconds == 0.5
    assert lateness.share == pytest.approx(0.4)
    # Sent over 0.0 … 0.9 s (the last due at 0.4 left 0.5 s late): 4 intervals in 0.9 s.
    assert lateness.offered_per_second == pytest.approx(4 / 0.9)


def test_closed_loop_payments_have_no_lateness() -> None:
    tracked = [Tracked(PaymentSpec(source="acc_a", destination="acc_b", amount=100))]
    assert lateness_of(tracked).scheduled == 0


async def test_a_slow_sender_makes_later_sends_late_and_they_are_counted() -> None:
    # 100/s with one POST in flight at most, each taking 50 ms: payment k is due at 10k ms but
    # can leave only at about 50k ms, so every one after the first is late by about 40k ms.
    client = FakeSender(delay=0.05)
    specs = _specs(10)
    result = await _run(specs, rate=100.0, cap=1, client=client)

    start = result.tracked[0].sent_at
    for index, tracked in enumerate(result.tracked):
        assert tracked.sent_at == pytest.approx(start + index / 100.0)  # sent_at is the due time
        actual = client.sent_at[tracked.spec.key]
        assert tracked.late_by == pytest.approx(actual - tracked.sent_at, abs=0.005)
        assert tracked.api_latency is not None and tracked.api_latency >= tracked.late_by + 0.05 - 0.005
    lateness = lateness_of(result.tracked)
    assert lateness.late >= 9
    assert lateness.max_seconds >= 0.35
    assert result.waited_for_cap >= 8
    assert not lateness.kept_up
    assert result.figures()["schedule"]["late"] == lateness.late


async def test_a_user_still_busy_with_its_last_payment_sends_the_next_one_late() -> None:
    # Payments alternate between a slow user (each POST 150 ms) and a quick one, at 100/s.
    slow, quick = FakeSender(delay=0.15), FakeSender()
    specs = [spec for pair in zip(_specs(3, "acc_slow"), _specs(3, "acc_quick"), strict=True) for spec in pair]
    specs = [PaymentSpec(source=s.source, destination="acc_z", amount=100, key=f"{s.source}-{i}")
             for i, s in enumerate(specs)]
    result = await _run(specs, rate=100.0, cap=100, client=FakeSender(),
                        sender_of=lambda spec: slow if spec.source == "acc_slow" else quick)

    by_source: dict[str, list[Tracked]] = {"acc_slow": [], "acc_quick": []}
    for tracked in result.tracked:
        assert tracked.spec.source is not None
        by_source[tracked.spec.source].append(tracked)
    slow_late = [t.late_by for t in by_source["acc_slow"]]
    assert slow_late[0] is not None and slow_late[0] < 0.1
    # The second is due 20 ms in but waits for the first's answer (150 ms); the third for both.
    assert slow_late[1] is not None and slow_late[1] >= 0.12
    assert slow_late[2] is not None and slow_late[2] >= 0.25
    assert slow.most_in_flight == 1  # one request at a time on a user's connection
    assert set(slow.sent_at) == {t.spec.key for t in by_source["acc_slow"]}
    assert set(quick.sent_at) == {t.spec.key for t in by_source["acc_quick"]}
    assert result.waited_for_sender >= 2
    assert lateness_of(result.tracked).late >= 2


def test_the_report_says_plainly_when_the_client_could_not_keep_up() -> None:
    behind = Lateness(scheduled=1000, late=400, behind=300, max_seconds=0.25, p99_seconds=0.2,
                      offered_per_second=612.0)
    line = behind.line()
    assert not behind.kept_up
    assert line.startswith("the client could not keep up: 400 of 1,000 sent late")
    assert "more than 10 ms after their due time" in line and "max lateness 250.0 ms" in line
    assert "300 of them more than 100 ms" in line and "612.0/s" in line
    # Many a little late (a busy loop's jitter) is counted, but is not falling behind.
    jitter = Lateness(scheduled=1000, late=30, behind=0, max_seconds=0.03, p99_seconds=0.012,
                      offered_per_second=300.0)
    assert jitter.kept_up and jitter.line().startswith("the client kept to the schedule: 30 of 1,000")
    just_over = Lateness(scheduled=1000, late=11, behind=11, max_seconds=0.2, p99_seconds=0.15,
                         offered_per_second=300.0)
    assert not just_over.kept_up


@pytest.mark.parametrize(("options", "says"), [
    (BenchOptions(rate=0), "--rate must be a positive number"),
    (BenchOptions(rate=-5), "--rate must be a positive number"),
    (BenchOptions(rate=float("nan")), "--rate must be a positive number"),
    (BenchOptions(duration=5), "--duration needs --rate"),
    (BenchOptions(users=10), "--users needs --rate"),
    (BenchOptions(rate=10, users=0), "--users must be at least 1"),
    (BenchOptions(rate=10, duration=0), "--duration must be a positive number"),
    (BenchOptions(rate=10, payments=100), "--payments and --rate conflict"),
    (BenchOptions(rate=10, concurrency=8), "--concurrency and --rate conflict"),
    (BenchOptions(rate=10, users=5, accounts=100), "--accounts and --users conflict"),
])
def test_bad_bench_options_are_refused(options: BenchOptions, says: str) -> None:
    with pytest.raises(BenchError, match=says):
        check_bench_options(options)


def test_a_rate_sends_rate_times_duration_payments() -> None:
    assert check_bench_options(BenchOptions(rate=20, duration=5)).total == 100
    assert check_bench_options(BenchOptions(rate=20)).total == 600  # 30 s unless told
    assert check_bench_options(BenchOptions()).total == 10_000


@pytest.mark.parametrize(("args", "says"), [
    (["--rate", "0"], "--rate must be a positive number"),
    (["--duration", "5"], "--duration needs --rate"),
    (["--users", "10"], "--users needs --rate"),
    (["--rate", "10", "--users", "0"], "--users must be at least 1"),
    (["--rate", "10", "--payments", "100"], "--payments and --rate conflict"),
    (["--rate", "10", "--concurrency", "8"], "--concurrency and --rate conflict"),
])
def test_bad_bench_input_is_one_line_and_exit_2(args: list[str], says: str,
                                                refused: Callable[[list[str]], str]) -> None:
    assert says in refused(["bench", *args])
