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
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from paystream.fraud.domain import DEPENDENCY_REASONS
from paystream.tools.client import PaystreamClient
from paystream.tools.load_results import TERMINAL, LoadResult, PaymentSpec, RateSchedule, Tracked
from paystream.tools.receiver import PaymentUpdate, WebhookReceiver

RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})

ReviewDecider = Callable[[PaymentSpec], bool]


class Sender(Protocol):
    """What sends a payment's POST: the shared `PaystreamClient`, or one user's connection."""

    async def request(
        self, method: str, path: str, *, json_body: Any = None, idempotency_key: str | None = None,
    ) -> httpx.Response: ...


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
