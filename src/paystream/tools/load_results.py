"""What a load run sends and what it found: the payments, their tracked fates, the schedule
of an open-loop run and how well the sends kept to it, and the run's figures (`LoadResult`).

Times are ``time.perf_counter()`` seconds (see `paystream.tools.load`).
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "declined"})
LATE_AFTER_SECONDS = 0.010  # a send this long after its due time was not sent on time
# The client could not keep up when more than KEEP_UP_SHARE of the sends left more than
# BEHIND_AFTER_SECONDS after their due time: a few sends 10-30 ms late are the jitter of a
# busy event loop, hundreds of milliseconds is a queue.
BEHIND_AFTER_SECONDS = 0.100
KEEP_UP_SHARE = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentSpec:
    """One payment to send: a transfer when it has a source, else a deposit."""

    destination: str
    amount: int
    source: str | None = None
    currency: str = "USD"
    scenario: str = "ordinary"
    key: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def kind(self) -> str:
        return "deposit" if self.source is None else "transfer"

    def request(self) -> tuple[str, dict[str, Any]]:
        """The public API path and JSON body that create this payment."""
        if self.source is None:
            return "/v1/deposits", {
                "account_id": self.destination, "amount": self.amount, "currency": self.currency,
            }
        return "/v1/payments", {
            "source_account_id": self.source,
            "destination_account_id": self.destination,
            "amount": self.amount,
            "currency": self.currency,
            "metadata": {"scenario": self.scenario},
        }


@dataclass(slots=True)
class Tracked:
    """What the engine knows about one payment it sent."""

    spec: PaymentSpec
    sent_at: float = 0.0  # the first POST was sent (at a set rate: when it was due)
    late_by: float | None = None  # at a set rate: how long after its due time the POST left
    answered_at: float | None = None  # the API accepted it (after any retries)
    payment_id: str | None = None
    api_latency: float | None = None
    rejection: str | None = None  # "<status> <code>" when the API did not answer 202
    status: str | None = None
    failure_code: str | None = None
    terminal_at: float | None = None
    review_at: float | None = None  # first heard of it waiting for review
    learned_by: str | None = None  # "webhook", "poll" or "api" (the POST's own answer)
    last_news: float = 0.0
    review_approved: bool | None = None  # our reviewer's decision, once the API took it
    review_sent: bool | None = None  # the decision our reviewer sent (its Idempotency-Key binds it)

    @property
    def accepted(self) -> bool:
        return self.payment_id is not None

    @property
    def terminal(self) -> bool:
        return self.terminal_at is not None

    @property
    def reviewed(self) -> bool:
        return self.review_approved is not None

    @property
    def review_decision(self) -> bool | None:
        """Our reviewer's decision: taken by the API, or sent and its answer lost (a copy died
        after deciding); the review's own Idempotency-Key makes the two the same decision."""
        return self.review_approved if self.review_approved is not None else self.review_sent

    @property
    def end_to_end(self) -> float | None:
        if self.terminal_at is None:
            return None
        return self.terminal_at - self.sent_at


@dataclass(frozen=True, slots=True)
class RateSchedule:
    """Open loop at ``rate`` per second from ``start``: payment ``index`` is due at
    ``start + index / rate``, whatever happened to the ones before it."""

    rate: float
    start: float

    def due(self, index: int) -> float:
        return self.start + index / self.rate


@dataclass(frozen=True, slots=True)
class Lateness:
    """How well the sends kept to their schedule (seconds)."""

    scheduled: int
    late: int
    behind: int  # of which later than BEHIND_AFTER_SECONDS
    max_seconds: float
    p99_seconds: float | None
    offered_per_second: float  # the rate actually sent: sends over the span they took
    threshold: float = LATE_AFTER_SECONDS

    @property
    def share(self) -> float:
        return self.late / self.scheduled if self.scheduled else 0.0

    @property
    def kept_up(self) -> bool:
        return (self.behind / self.scheduled if self.scheduled else 0.0) <= KEEP_UP_SHARE

    def line(self) -> str:
        """One line for the report; it says plainly when the client could not keep up."""
        counted = (f"{self.late:,} of {self.scheduled:,} sent late (more than "
                   f"{self.threshold * 1000:g} ms after their due time, {self.share:.1%}), "
                   f"max lateness {self.max_seconds * 1000:,.1f} ms")
        if self.kept_up:
            return f"the client kept to the schedule: {counted}"
        return (f"the client could not keep up: {counted}, {self.behind:,} of them more than "
                f"{BEHIND_AFTER_SECONDS * 1000:g} ms; it sent {self.offered_per_second:,.1f}/s, and every "
                "late send's latencies count from its due time")

    def figures(self) -> dict[str, Any]:
        return {
            "late_threshold_seconds": self.threshold,
            "scheduled": self.scheduled,
            "late": self.late,
            "late_share": round(self.share, 4),
            "late_by_more_than_100ms": self.behind,
            "max_lateness_seconds": round(self.max_seconds, 4),
            "lateness_p99_seconds": None if self.p99_seconds is None else round(self.p99_seconds, 4),
            "offered_per_second": round(self.offered_per_second, 1),
            "kept_up": self.kept_up,
        }


def lateness_of(tracked: Sequence[Tracked], threshold: float = LATE_AFTER_SECONDS) -> Lateness:
    """Sum up the lateness of the payments sent at a rate (those with a ``late_by``)."""
    delays = [t.late_by for t in tracked if t.late_by is not None]
    scheduled = [t for t in tracked if t.late_by is not None]
    span = 0.0
    if scheduled:
        first_due = min(t.sent_at for t in scheduled)
        last_sent = max(t.sent_at + (t.late_by or 0.0) for t in scheduled)
        span = last_sent - first_due
    offered = (len(scheduled) - 1) / span if len(scheduled) > 1 and span > 0 else 0.0
    return Lateness(
        scheduled=len(delays),
        late=sum(1 for d in delays if d > threshold),
        behind=sum(1 for d in delays if d > BEHIND_AFTER_SECONDS),
        max_seconds=max(delays, default=0.0),
        p99_seconds=percentile(delays, 99),
        offered_per_second=offered,
        threshold=threshold,
    )


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(slots=True)
class LoadResult:
    """Everything one run observed, and the figures derived from it."""

    tracked: list[Tracked]
    submit_seconds: float
    first_sent: float
    polls: int
    reviews_decided: int
    rate: float | None = None  # the open-loop rate it was sent at; None: closed loop
    waited_for_cap: int = 0  # at a rate: sends that found every in-flight slot taken
    waited_for_sender: int = 0  # sends whose sender (a user's connection) was still busy

    @property
    def sent(self) -> int:
        return len(self.tracked)

    @property
    def accepted(self) -> list[Tracked]:
        return [t for t in self.tracked if t.accepted]

    @property
    def settled(self) -> list[Tracked]:
        return [t for t in self.tracked if t.terminal]

    @property
    def unsettled(self) -> list[Tracked]:
        return [t for t in self.tracked if t.accepted and not t.terminal]

    @property
    def complete_seconds(self) -> float:
        """From the first POST to the last terminal state."""
        ends = [t.terminal_at for t in self.tracked if t.terminal_at is not None]
        return max(ends) - self.first_sent if ends else 0.0

    def accepted_per_second(self) -> float:
        return len(self.accepted) / self.submit_seconds if self.submit_seconds > 0 else 0.0

    def completed_per_second(self) -> float:
        seconds = self.complete_seconds
        return len(self.settled) / seconds if seconds > 0 else 0.0

    def api_latencies(self) -> list[float]:
        return [t.api_latency for t in self.tracked if t.api_latency is not None]

    def end_to_end(self, *, reviewed: bool = False) -> list[float]:
        """End-to-end latencies of payments decided automatically (or, asked, by review)."""
        values = []
        for t in self.tracked:
            if t.end_to_end is not None and t.reviewed == reviewed:
                values.append(t.end_to_end)
        return values

    def outcomes(self) -> Counter[tuple[str, str]]:
        """(status, failure code or "") → count, over accepted payments."""
        counts: Counter[tuple[str, str]] = Counter()
        for t in self.accepted:
            status = t.status if t.terminal and t.status else f"{t.status or 'unknown'} (not terminal)"
            counts[(status, t.failure_code or "")] += 1
        return counts

    def rejections(self) -> Counter[str]:
        return Counter(t.rejection for t in self.tracked if t.rejection is not None)

    def learned_by(self) -> Counter[str]:
        return Counter(t.learned_by for t in self.tracked if t.learned_by is not None)

    def figures(self) -> dict[str, Any]:
        """The headline numbers, JSON-ready (seconds for latencies)."""
        api = self.api_latencies()
        e2e = self.end_to_end()
        return {
            "sent": self.sent,
            "accepted": len(self.accepted),
            "terminal": len(self.settled),
            "not_terminal": len(self.unsettled),
            "submit_seconds": round(self.submit_seconds, 3),
            "complete_seconds": round(self.complete_seconds, 3),
            "accepted_per_second": round(self.accepted_per_second(), 1),
            "completed_per_second": round(self.completed_per_second(), 1),
            "api_latency_seconds": {
                "p50": percentile(api, 50), "p95": percentile(api, 95), "p99": percentile(api, 99),
            },
            "end_to_end_seconds": {"p50": percentile(e2e, 50), "p99": percentile(e2e, 99)},
            "statuses": {f"{s}/{c}" if c else s: n for (s, c), n in sorted(self.outcomes().items())},
            "rejections": dict(self.rejections()),
            "learned_by": dict(self.learned_by()),
            **({} if self.rate is None else {"schedule": {
                "rate": self.rate, **lateness_of(self.tracked).figures(),
                "waited_for_in_flight_cap": self.waited_for_cap,
                "waited_for_busy_sender": self.waited_for_sender,
            }}),
        }
