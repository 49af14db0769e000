"""The screening deadline: a payment fraud has not decided in time goes to review, funds held.

Fraud may be slow or far behind (seed 001: decisions slow from 50 ms to 4 s), so the
deadline is kept by payments, which owns the payment, not by fraud. `ScreeningDeadline`
runs in every copy of the payments service; each round:

1. finds the payments still in ``processing`` with no screening decision whose
   ``created_at`` is more than ``deadline`` seconds ago, asks fraud which of them it has
   decided already (their decision is on its way: our consumer is behind, fraud is not
   late; no answer within a second counts as none), and locks the others
   (``FOR UPDATE SKIP LOCKED``: one copy takes each, and none waits for a consumer's batch);
2. moves each to ``requires_review`` through the state machine (``screening.deadline``, a
   screening decision: from now on fraud's own decision for it changes nothing), and in
   the same transaction writes the ``fraud.review`` event (reason ``screening_deadline``)
   that makes the ledger hold the funds exactly as for a review fraud asked for, the
   public ``payment.requires_review``, and a `PendingHandoff` row;
3. hands the review rows fraud has not accepted yet to fraud's internal API, which puts
   them in the review queue (where a reviewer, or fraud's re-screen once it is back,
   decides them). Fraud's consumer may be minutes behind, so this does not wait for it;
   a row stays until fraud answers 2xx, and fraud accepts one twice harmlessly.

Steps 1-2 and step 3 run as two loops, so a fraud that is slow to answer never delays a
sweep. A process that has just started waits one deadline before its first sweep, so its
consumers can first apply the screening decisions that queued on the bus while it was
down. A round that fails (the database or fraud away) is logged and retried the next round.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
from prometheus_client import Counter

from paystream.contracts.envelope import make_envelope
from paystream.contracts.events import FraudReview, PaymentOrder
from paystream.contracts.ids import new_id
from paystream.contracts.internal import (
    DeadlineReview,
    DeadlineReviews,
    DecisionLookup,
    DecisionsFound,
)
from paystream.payments.domain import DEADLINE_REASON, next_state
from paystream.payments.handlers import Changes, order_of
from paystream.payments.store import PaymentsStore, PendingHandoff
from paystream.platform.errors import TransientError
from paystream.platform.http import Caller
from paystream.platform.internal import InternalClient
from paystream.platform.observability import Metrics, bound, get_logger, held_until_commit, log_on_commit
from paystream.platform.outbox import Outbox
from paystream.platform.runtime import repeat

log = get_logger(__name__)

METRIC = "paystream_screening_deadline_total"
# Fraud's internal route that puts deadline reviews in its queue.
FRAUD_ROUTE = "/internal/reviews/deadline"
# ... and the one that says which payments it has decided.
LOOKUP_ROUTE = "/internal/decisions/lookup"
# For how many deadlines a decision fraud says it made is awaited before the deadline acts
# anyway (fraud's outbox could be stuck; the ledger then keeps whichever came first).
_TRUST_DECIDED = 10
_SYSTEM = Caller(tenant_id="system", client_id="payments", user_id=None, scopes=frozenset(),
                 correlation_id="", idempotency_key=None)


def deadline_counter(metrics: Metrics) -> Counter:
    """``paystream_screening_deadline_total`` on this process's registry (made once)."""
    existing = getattr(metrics, "screening_deadline", None)
    if isinstance(existing, Counter):  # platform Metrics may define it one day
        return existing
    return Counter(METRIC, "Payments sent to review because fraud did not decide in time",
                   registry=metrics.registry)


class ScreeningDeadline:
    """Sends overdue payments to review and their reviews to fraud (module docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: PaymentsStore,
        outbox: Outbox,
        fraud: InternalClient,
        counter: Counter,
        *,
        deadline: float,
        interval: float = 0.25,
        batch: int = 500,
    ) -> None:
        self._pool = pool
        self._store = store
        self._outbox = outbox
        self._fraud = fraud
        self._counter = counter
        self._deadline = timedelta(seconds=deadline)
        self._interval = interval
        self._batch = batch
        self._started = datetime.now(UTC)

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Send the payments overdue at ``now`` to review; returns how many."""
        now = now or datetime.now(UTC)
        # A process just started (after a crash, a deploy) gives its consumers one deadline to
        # apply the screening decisions that wait for it on the bus before judging anything.
        if now < self._started + self._deadline:
            return 0
        async with self._pool.acquire() as conn:
            candidates = await self._store.overdue(conn, now - self._deadline, self._batch)
        if not candidates:
            return 0
        trusted = now - self._deadline * _TRUST_DECIDED
        decided = await self._decided_by_fraud([pid for pid, created in candidates if created > trusted])
        due = [pid for pid, _ in candidates if pid not in decided]
        if not due:
            return 0
        with held_until_commit():
            async with self._pool.acquire() as conn, conn.transaction():
                taken = await self._expire(conn, due, now)
        if taken:
            self._counter.inc(taken)
        return taken

    async def _decided_by_fraud(self, payment_ids: list[str]) -> set[str]:
        """The payments fraud has decided, whose decision has not reached us yet (our own
        consumer is behind): not a missed deadline. Unknown (fraud does not answer within
        a second) counts as undecided: fraud is away, which is what the deadline is for."""
        if not payment_ids:
            return set()
        body = msgspec.json.encode(DecisionLookup(payment_ids=payment_ids))
        try:
            response = await asyncio.wait_for(
                self._fraud.request("POST", LOOKUP_ROUTE, _SYSTEM, content=body), timeout=1.0
            )
            if response.status_code != 200:
                raise TransientError(f"fraud answered {response.status_code}")
            found = msgspec.json.decode(response.content, type=DecisionsFound)
        except (TransientError, TimeoutError, msgspec.DecodeError) as exc:
            log.warning("fraud_decisions_unknown", error=str(exc) or repr(exc),
                        payments=len(payment_ids))
            return set()
        if found.decided:
            log.info("screening_decisions_in_flight", payments=len(found.decided))
        return set(found.decided)

    async def _expire(self, conn: asyncpg.Connection, due: list[str], now: datetime) -> int:
        payments = await self._store.lock_unscreened(conn, due)
        changes = Changes()
        reviews: list[PendingHandoff] = []
        for payment in payments:
            transition = next_state(payment["status"], "screening.deadline", screened=False)
            assert transition is not None, "an unscreened payment in processing goes to review"
            order = order_of(payment)
            review_id = new_id("rev")
            waited = (now - payment["created_at"]).total_seconds()
            with bound(payment_id=payment["id"], correlation_id=payment["id"], review_id=review_id):
                log_on_commit(log, "screening_deadline", waited_seconds=round(waited, 3),
                              deadline_seconds=self._deadline.total_seconds())
                changes.apply(payment, transition, "screening.deadline", None, now)
            changes.events.append(make_envelope(
                FraudReview(order=order, review_id=review_id, reasons=[DEADLINE_REASON]),
                partition_key=order.account_key, correlation_id=payment["id"],
            ))
            reviews.append(PendingHandoff(payment["id"], payment["tenant_id"], review_id,
                                          msgspec.to_builtins(order), now))
        await changes.write(conn, self._store, self._outbox, now)
        await self._store.add_deadline_reviews(conn, reviews)
        return len(payments)

    async def send_once(self) -> int:
        """Hand unsent deadline reviews to fraud; returns how many it accepted."""
        async with self._pool.acquire() as conn, conn.transaction():
            reviews = await self._store.unsent_deadline_reviews(conn, self._batch)
            if not reviews:
                return 0
            body = msgspec.json.encode(DeadlineReviews(reviews=[
                DeadlineReview(id=r.review_id, payment=msgspec.convert(r.payment, PaymentOrder),
                               created_at=r.created_at)
                for r in reviews
            ]))
            response = await self._fraud.request("POST", FRAUD_ROUTE, _SYSTEM, content=body)
            if response.status_code >= 300:
                raise TransientError(f"fraud refused deadline reviews: {response.status_code} "
                                     f"{response.content[:200]!r}")
            await self._store.mark_sent(conn, [r.payment_id for r in reviews], datetime.now(UTC))
            return len(reviews)

    async def run(self, stopping: asyncio.Event) -> None:
        """The sweeps (steps 1-2); they never wait for fraud."""
        await repeat(stopping, self.sweep_once, interval=self._interval, backlog=self._batch,
                     failed="screening_deadline_failed")

    async def run_handoff(self, stopping: asyncio.Event) -> None:
        """The hand-off to fraud (step 3), in a loop of its own: a slow fraud delays only this."""
        await repeat(stopping, self.send_once, interval=self._interval, backlog=self._batch,
                     failed="deadline_reviews_not_sent")
