"""The load engine shared by `paystream demo` and `paystream bench`.

`LoadEngine.run` sends a list of `PaymentSpec` through the public API at a fixed
concurrency, then waits until every accepted payment is terminal. It learns states
from the signed webhooks the `WebhookReceiver` gets, polls ``GET /v1/payments/{id}``
for a payment it has heard nothing about for a while, and gives up when nothing has
settled for ``stall_timeout`` seconds. Payments held for review are handed to the
caller's `ReviewDecider` and approved or declined through ``/v1/reviews``.

Times are ``time.perf_counter()`` seconds: API latency is the POST until its answer,
end-to-end latency the POST being sent until the terminal webhook (or poll) arrived.

At a set rate (``EngineOptions.rate``, open loop) every payment has a due time on a fixed
schedule (`RateSchedule`), and both latencies count from that due time, not from when the
POST actually left: a slow answer that holds up later sends shows in their latencies
instead of quietly thinning the load (no coordinated omission). A send that leaves more
than `LATE_AFTER_SECONDS` after its due time is *late*; `Lateness` sums them up. What can
hold a send past its due time: the client's own event loop, the cap on POSTs in flight
(``concurrency``), and, when each payment goes out through its own sender (``sender_of``:
one connection per wallet user), that sender still busy with its previous payment — a
sender carries one request at a time and later ones queue for it in due order.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from paystream.fraud.domain import DEPENDENCY_REASONS
from paystream.tools.client import PaystreamClient
from paystream.tools.receiver import PaymentUpdate, WebhookReceiver

TERMINAL = frozenset({"succeeded", "failed", "declined"})
RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
LATE_AFTER_SECONDS = 0.010  # a send this long after its due time was not sent on time
# The client could not keep up when more than KEEP_UP_SHARE of the sends left more than
# BEHIND_AFTER_SECONDS after their due time: a few sends 10-30 ms late are the jitter of a
# busy event loop, hundreds of milliseconds is a queue.
BEHIND_AFTER_SECONDS = 0.100
KEEP_UP_SHARE = 0.01

T = TypeVar("T")


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


ReviewDecider = Callable[[PaymentSpec], bool]


class Sender(Protocol):
    """What sends a payment's POST: the shared `PaystreamClient`, or one user's connection."""

    async def request(
        self, method: str, path: str, *, json_body: Any = None, idempotency_key: str | None = None,
    ) -> httpx.Response: ...


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


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    """How hard and how long the engine pushes."""

    concurrency: int = 32  # POSTs in flight at most
    # Open loop: start a POST every 1/rate seconds whatever the answers, as real clients do
    # (``concurrency`` then only caps how many are in flight at once, and a send the cap
    # holds past its due time counts as late); None: closed loop, each of ``concurrency``
    # workers sends its next one when the last is answered.
    rate: float | None = None
    poll_after: float = 15.0  # seconds without news about a payment before polling it
    poll_concurrency: int = 4
    stall_timeout: float = 60.0  # give up when nothing settled for this long
    max_wait: float = 900.0  # and in any case this long after the last submission
    review_interval: float = 0.5
    retries: int = 3  # per POST, same Idempotency-Key, on transport errors, 409, 429 and 5xx
    accepted_status: int = 202  # the answer that accepts a payment (the floor's is 201: tools/floor.py)


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


class LoadEngine:
    """Sends payments at a concurrency and follows each one to its terminal state."""

    def __init__(
        self,
        client: PaystreamClient,
        receiver: WebhookReceiver,
        options: EngineOptions | None = None,
        *,
        decide_review: ReviewDecider | None = None,
        sender_of: Callable[[PaymentSpec], Sender] | None = None,
    ) -> None:
        self._client = client
        self._receiver = receiver
        self._options = options or EngineOptions()
        self._decide_review = decide_review
        self._sender_of = sender_of
        self._lanes: dict[int, asyncio.Lock] = {}  # id(sender) → its one request at a time
        self._tracked: list[Tracked] = []
        self._by_id: dict[str, Tracked] = {}
        self._open: dict[str, Tracked] = {}
        self._early: dict[str, PaymentUpdate] = {}
        self._awaiting_review: dict[str, Tracked] = {}
        self._submitting = False
        self._done = asyncio.Event()
        self._last_progress = 0.0
        self.polls = 0
        self.reviews_decided = 0
        self.sent = 0
        self.settled = 0
        self.rejected = 0
        self.waited_for_cap = 0
        self.waited_for_sender = 0
        self.answers: Counter[int] = Counter()  # every HTTP status the POSTs got, retries too

    @property
    def total(self) -> int:
        return len(self._tracked)

    async def run(self, specs: Iterable[PaymentSpec]) -> LoadResult:
        """Send every spec, wait until all accepted ones are terminal (or stalled)."""
        self._reset(specs)
        await self._client.token()  # so the first POST's latency is not a token fetch
        self._receiver.subscribe(self._on_update)
        watchers = [asyncio.create_task(self._poll_loop()), asyncio.create_task(self._review_loop())]
        try:
            first_sent = time.perf_counter()
            await self._submit_all()
            submit_seconds = time.perf_counter() - first_sent
            self._submitting = False
            self._check_done()
            await self._wait_settled()
        finally:
            self._receiver.unsubscribe(self._on_update)
            for task in watchers:
                task.cancel()
            for task in watchers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return LoadResult(
            tracked=self._tracked, submit_seconds=submit_seconds, first_sent=first_sent,
            polls=self.polls, reviews_decided=self.reviews_decided, rate=self._options.rate,
            waited_for_cap=self.waited_for_cap, waited_for_sender=self.waited_for_sender,
        )

    def _reset(self, specs: Iterable[PaymentSpec]) -> None:
        self._tracked = [Tracked(spec) for spec in specs]
        self._by_id.clear()
        self._open.clear()
        self._early.clear()
        self._awaiting_review.clear()
        self._submitting = True
        self._done.clear()
        self._last_progress = time.perf_counter()
        self.polls = self.reviews_decided = self.sent = self.settled = self.rejected = 0
        self.waited_for_cap = self.waited_for_sender = 0
        self._lanes.clear()
        self.answers.clear()

    # -- submission ------------------------------------------------------------------------

    async def _submit_all(self) -> None:
        if self._options.rate is not None:
            await self._submit_at_rate(self._options.rate)
            return
        pending = iter(self._tracked)
        workers = min(self._options.concurrency, len(self._tracked))
        await asyncio.gather(*(self._submit_worker(pending) for _ in range(workers)))

    async def _submit_at_rate(self, rate: float) -> None:
        """One POST due every 1/rate s; a late answer delays none of the next ones. The
        schedule is fixed at the start: a loop that wakes late starts every send already due
        at once (each then late by as much), it never shifts the ones after."""
        slots = asyncio.Semaphore(self._options.concurrency)
        schedule = RateSchedule(rate, time.perf_counter())
        tasks: list[asyncio.Task[None]] = []

        async def one(tracked: Tracked, due: float) -> None:
            sender: Sender = self._client
            lane: asyncio.Lock | contextlib.nullcontext[None] = contextlib.nullcontext()
            if self._sender_of is not None:
                sender = self._sender_of(tracked.spec)
                lane = self._lanes.setdefault(id(sender), asyncio.Lock())
                if lane.locked():
                    self.waited_for_sender += 1
            async with lane:
                if slots.locked():
                    self.waited_for_cap += 1
                async with slots:
                    tracked.late_by = max(0.0, time.perf_counter() - due)
                    await self._submit(tracked, due=due, sender=sender)
            self.sent += 1

        for index, tracked in enumerate(self._tracked):
            due = schedule.due(index)
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(tracked, due)))
        await asyncio.gather(*tasks)

    async def _submit_worker(self, pending: Iterator[Tracked]) -> None:
        for tracked in pending:
            await self._submit(tracked)
            self.sent += 1

    async def _submit(self, tracked: Tracked, *, due: float | None = None, sender: Sender | None = None) -> None:
        """POST one payment, retrying with the same key when that is safe and useful. At a
        set rate its latencies count from when it was ``due``, so a queue before the POST
        shows in them (no coordinated omission)."""
        sender = sender or self._client
        path, body = tracked.spec.request()
        tracked.sent_at = time.perf_counter() if due is None else due
        outcome = "no answer"
        for attempt in range(self._options.retries + 1):
            if attempt:
                await asyncio.sleep(0.2 * 2**attempt)
            began = time.perf_counter()
            try:
                response = await sender.request(
                    "POST", path, json_body=body, idempotency_key=tracked.spec.key
                )
            except httpx.TransportError as exc:
                outcome = f"transport {type(exc).__name__}"
                continue
            self.answers[response.status_code] += 1
            if response.status_code == self._options.accepted_status:
                self._accept(tracked, response.json(), time.perf_counter() - (began if due is None else due))
                return
            outcome = f"{response.status_code} {_problem_code(response)}"
            if response.status_code not in RETRYABLE_STATUSES:
                break
        tracked.rejection = outcome
        self.rejected += 1
        self._check_done()

    def _accept(self, tracked: Tracked, payment: dict[str, Any], latency: float) -> None:
        payment_id = str(payment["id"])
        tracked.payment_id = payment_id
        tracked.api_latency = latency
        tracked.answered_at = tracked.last_news = time.perf_counter()
        self._by_id[payment_id] = tracked
        self._open[payment_id] = tracked
        self._apply(tracked, str(payment["status"]), payment.get("failure_code"),
                    tracked.last_news, "api")
        early = self._early.pop(payment_id, None)
        if early is not None:
            self._apply(tracked, early.status, early.failure_code, early.received_at, "webhook")

    # -- what we learn about payments --------------------------------------------------------

    def _on_update(self, update: PaymentUpdate) -> None:
        tracked = self._by_id.get(update.payment_id)
        if tracked is not None:
            self._apply(tracked, update.status, update.failure_code, update.received_at, "webhook")
            return
        # The webhook can beat the POST's own answer; keep the most final news for later.
        kept = self._early.get(update.payment_id)
        if kept is None or kept.status not in TERMINAL:
            self._early[update.payment_id] = update

    def _apply(self, tracked: Tracked, status: str, failure_code: str | None, at: float, via: str) -> None:
        """Record news about a payment; a terminal state is final."""
        if tracked.terminal:
            return
        tracked.last_news = time.perf_counter()
        tracked.status = status
        tracked.failure_code = failure_code
        if status in TERMINAL:
            tracked.terminal_at = at
            tracked.learned_by = via
            assert tracked.payment_id is not None
            self._open.pop(tracked.payment_id, None)
            self._awaiting_review.pop(tracked.payment_id, None)
            self.settled += 1
            self._last_progress = time.perf_counter()
            self._check_done()
        elif status == "requires_review" and not tracked.reviewed:
            assert tracked.payment_id is not None
            tracked.review_at = tracked.review_at or at
            self._awaiting_review[tracked.payment_id] = tracked

    def _check_done(self) -> None:
        if not self._submitting and not self._open:
            self._done.set()

    async def _wait_settled(self) -> None:
        """Until every accepted payment is terminal, nothing settles for a while, or time is up."""
        deadline = time.perf_counter() + self._options.max_wait
        while not self._done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), timeout=1.0)
            now = time.perf_counter()
            if now - self._last_progress > self._options.stall_timeout or now > deadline:
                return

    # -- fallback polling --------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        slots = asyncio.Semaphore(self._options.poll_concurrency)
        while True:
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            stale = [t for t in self._open.values() if now - t.last_news > self._options.poll_after]
            await asyncio.gather(*(self._poll(t, slots) for t in stale[:200]))

    async def _poll(self, tracked: Tracked, slots: asyncio.Semaphore) -> None:
        assert tracked.payment_id is not None
        tracked.last_news = time.perf_counter()  # do not poll it again at once
        async with slots:
            try:
                response = await self._client.request("GET", f"/v1/payments/{tracked.payment_id}")
            except httpx.HTTPError:
                return
        self.polls += 1
        if response.status_code == 200:
            payment = response.json()
            self._apply(tracked, str(payment["status"]), payment.get("failure_code"),
                        time.perf_counter(), "poll")

    # -- reviews -----------------------------------------------------------------------------

    async def _review_loop(self) -> None:
        if self._decide_review is None:
            return
        while True:
            await asyncio.sleep(self._options.review_interval)
            if not self._awaiting_review:
                continue
            try:
                await self._decide_open_reviews(self._decide_review)
            except (httpx.HTTPError, ValueError, KeyError):
                continue  # try again on the next round

    async def _decide_open_reviews(self, decide: ReviewDecider) -> None:
        for review in await self._open_reviews():
            tracked = self._awaiting_review.get(review["payment_id"])
            if tracked is None:
                continue
            if set(review.get("reasons") or ()) <= DEPENDENCY_REASONS:
                # Held only because a dependency was away: paystream screens it again by
                # itself, and a reviewer who reads the reasons leaves it to that.
                continue
            approve = decide(tracked.spec)
            verb = "approve" if approve else "decline"
            tracked.review_sent = approve
            response = await self._client.request(
                "POST", f"/v1/reviews/{review['id']}/{verb}", idempotency_key=f"{verb}-{review['id']}"
            )
            if response.status_code == 409 and _problem_code(response) == "idempotency_key_in_use":
                continue  # our earlier try is still running (or its copy died): ask again next round
            if response.status_code in (200, 409):  # 409: already decided, by us or anyone
                tracked.review_approved = approve
                self._awaiting_review.pop(review["payment_id"], None)
                self.reviews_decided += 1

    async def _open_reviews(self) -> list[dict[str, Any]]:
        """Every open review, page by page."""
        reviews: list[dict[str, Any]] = []
        params: dict[str, Any] = {"status": "open", "limit": 100}
        while True:
            response = await self._client.request("GET", "/v1/reviews", params=params)
            if response.status_code != 200:
                return reviews
            page = response.json()
            reviews.extend(page["data"])
            if not page["has_more"] or not page["data"]:
                return reviews
            params["starting_after"] = page["data"][-1]["id"]


def _problem_code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("code") or "")
    except ValueError:
        return ""


# -- helpers for the tools ----------------------------------------------------------------------


WEBHOOK_EVENTS = ("payment.succeeded", "payment.failed", "payment.declined", "payment.requires_review")


@contextlib.asynccontextmanager
async def registered_receiver(client: PaystreamClient) -> AsyncIterator[WebhookReceiver]:
    """A started receiver, registered as a webhook endpoint for every payment event.

    The endpoint is deleted on the way out, so a stack does not keep retrying
    deliveries to a receiver that is gone.
    """
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        endpoint = await client.create_webhook_endpoint(receiver.url, list(WEBHOOK_EVENTS))
        receiver.secret = str(endpoint["secret"])
        try:
            yield receiver
        finally:
            with contextlib.suppress(httpx.HTTPError):
                await client.request("DELETE", f"/v1/webhook_endpoints/{endpoint['id']}")
    finally:
        await receiver.close()


async def bounded_gather(jobs: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run ``jobs`` with at most ``limit`` at a time; results in the jobs' order."""
    slots = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with slots:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


async def create_wallets(client: PaystreamClient, count: int, *, concurrency: int, label: str) -> list[str]:
    """Create ``count`` USD wallets (no overdraft) and return their ids."""

    def job(index: int) -> Callable[[], Awaitable[dict[str, Any]]]:
        return lambda: client.create_account("USD", metadata={"tool": label, "n": str(index)})

    accounts = await bounded_gather([job(i) for i in range(count)], concurrency)
    return [str(account["id"]) for account in accounts]


def progress_bars(console: Console) -> Progress:
    """The tools' progress display: a label, the bar, done of total, the time taken."""
    return Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


async def run_with_progress(
    engine: LoadEngine, specs: Sequence[PaymentSpec], console: Console, label: str
) -> LoadResult:
    """`engine.run` with two progress bars: submitted and terminal."""
    with progress_bars(console) as progress:
        submitted = progress.add_task(f"{label}: submitted", total=len(specs))
        finished = progress.add_task(f"{label}: terminal", total=len(specs))
        running = asyncio.create_task(engine.run(specs))
        while not running.done():
            progress.update(submitted, completed=engine.sent)
            progress.update(finished, completed=engine.settled + engine.rejected)
            await asyncio.wait({running}, timeout=0.2)
        progress.update(submitted, completed=engine.sent)
        progress.update(finished, completed=engine.settled + engine.rejected)
    return running.result()


# -- report tables ------------------------------------------------------------------------------


def milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f} ms"


def outcome_table(result: LoadResult, title: str = "Final status") -> Table:
    table = Table(title=title)
    table.add_column("status")
    table.add_column("failure_code")
    table.add_column("payments", justify="right")
    for (status, code), count in sorted(result.outcomes().items()):
        table.add_row(status, code or "-", f"{count:,}")
    for rejection, count in sorted(result.rejections().items()):
        table.add_row(f"[red]not accepted: {rejection}[/red]", "-", f"{count:,}")
    return table


def performance_table(result: LoadResult, title: str = "Throughput and latency") -> Table:
    api = result.api_latencies()
    e2e = result.end_to_end()
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("payments sent / accepted (202)", f"{result.sent:,} / {len(result.accepted):,}")
    table.add_row("submission wall time", f"{result.submit_seconds:,.2f} s")
    table.add_row("first POST → last terminal", f"{result.complete_seconds:,.2f} s")
    table.add_row("accepted/s", f"{result.accepted_per_second():,.1f}")
    table.add_row("completed/s", f"{result.completed_per_second():,.1f}")
    for pct in (50, 95, 99):
        table.add_row(f"API latency p{pct}", milliseconds(percentile(api, pct)))
    for pct in (50, 99):
        table.add_row(f"end-to-end p{pct}", milliseconds(percentile(e2e, pct)))
    reviewed = result.end_to_end(reviewed=True)
    if reviewed:
        table.add_row("end-to-end p50, via human review", milliseconds(percentile(reviewed, 50)))
    if result.rate is not None:
        late = lateness_of(result.tracked)
        table.add_row("scheduled rate / sent at", f"{result.rate:,.1f}/s / {late.offered_per_second:,.1f}/s")
        table.add_row(f"sent late (> {late.threshold * 1000:g} ms after due)",
                      f"{late.late:,} of {late.scheduled:,} ({late.share:.1%})")
        table.add_row("lateness p99 / max", f"{milliseconds(late.p99_seconds)} / {milliseconds(late.max_seconds)}")
        table.add_row("sends held by the in-flight cap / a busy sender",
                      f"{result.waited_for_cap:,} / {result.waited_for_sender:,}")
    return table
