"""Re-screening: reviews opened only because a dependency was away are screened again.

A review whose reasons are all dependency reasons (``screening_deadline``: fraud itself did
not decide in time; ``velocity_unavailable``: Redis did not answer in budget) says nothing
about the payment's risk, only that the rules could not run. `Rescreener` runs in every
copy of fraud; each round:

1. does nothing while the velocity guard's breaker is open (Redis is known to be away);
2. locks the open reviews whose ``rescreen_at`` is due (``FOR UPDATE SKIP LOCKED``: one
   copy takes each; a reviewer deciding one meanwhile waits for the lock, then finds it
   decided);
3. runs the same decision path as the consumer (the game-day delay included), within
   ``budget`` seconds. A path slower than that means the dependency is still away: every
   review of the round is tried again later, backing off (`rescreen_delay`);
4. applies `rescreen_step` to each decision: an approval or decline resolves the review as
   a reviewer's would (the same events: the ledger posts or voids the hold), a risk the
   rules see now hands the review to a human, a dependency still away backs off.

A review a human should see is never resolved here, and an approval needs the rules to
have run in full: ``velocity_unavailable`` never approves.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
from prometheus_client import Counter

from paystream.contracts.envelope import Envelope
from paystream.contracts.events import PaymentOrder
from paystream.fraud.domain import rescreen_delay, rescreen_step
from paystream.fraud.handlers import FraudHandlers, resolution_event
from paystream.fraud.store import FraudStore
from paystream.platform.observability import Metrics, bound, get_logger, held_until_commit, log_on_commit
from paystream.platform.outbox import Outbox
from paystream.platform.resilience import Guard, State
from paystream.platform.runtime import repeat

log = get_logger(__name__)


def rescreen_counter(metrics: Metrics) -> Counter:
    return Counter("paystream_rescreens_total", "Re-screens of reviews, by what they did",
                   ["step"], registry=metrics.registry)


class Rescreener:
    """Screens dependency-only reviews again with backoff (module docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: FraudStore,
        handlers: FraudHandlers,
        outbox: Outbox,
        guard: Guard,
        counter: Counter | None = None,
        *,
        budget: float = 1.0,
        backoff: float = 1.0,
        backoff_cap: float = 60.0,
        interval: float = 0.5,
        batch: int = 200,
    ) -> None:
        self._pool = pool
        self._store = store
        self._handlers = handlers
        self._outbox = outbox
        self._guard = guard
        self._counter = counter
        self._budget = budget
        self._backoff = backoff
        self._cap = backoff_cap
        self._interval = interval
        self._batch = batch

    def _later(self, now: datetime, attempts: int) -> datetime:
        seconds = rescreen_delay(attempts, base=self._backoff, cap=self._cap)
        return now + timedelta(seconds=seconds * random.uniform(0.9, 1.1))  # noqa: S311 - jitter

    def _count(self, step: str, n: int = 1) -> None:
        if self._counter is not None and n:
            self._counter.labels(step).inc(n)

    async def rescreen_once(self) -> int:
        """One round; returns how many reviews it resolved or handed to a human."""
        if self._guard.state is State.OPEN:
            return 0
        with held_until_commit():
            async with self._pool.acquire() as conn, conn.transaction():
                return await self._round(conn)

    async def _round(self, conn: asyncpg.Connection) -> int:
        now = datetime.now(UTC)
        rows = await self._store.due_rescreens(conn, now, self._batch)
        if not rows:
            return 0
        delay_ms = await self._store.decision_delay_ms(conn)
        orders = [msgspec.convert(row["payment"], PaymentOrder) for row in rows]
        try:
            decisions = await asyncio.wait_for(self._handlers.screen(orders, delay_ms), self._budget)
        except TimeoutError:
            log.info("rescreen_deferred", reviews=len(rows), reason="decision_slower_than_budget",
                     budget_seconds=self._budget)
            await self._store.reschedule(
                conn, {row["id"]: self._later(now, row["rescreen_attempts"]) for row in rows}
            )
            self._count("deferred", len(rows))
            return 0
        events: list[Envelope] = []
        later: dict[str, datetime] = {}
        settled = 0
        for row, order, decision in zip(rows, orders, decisions, strict=True):
            step = rescreen_step(decision)
            self._count(step)
            with bound(payment_id=order.payment_id, review_id=row["id"]):
                if step == "retry":
                    later[row["id"]] = self._later(now, row["rescreen_attempts"])
                    continue
                settled += 1
                if step == "human":
                    log_on_commit(log, "rescreen_to_human", reasons=list(decision.reasons))
                    await self._store.to_human(conn, row["id"], list(decision.reasons))
                    continue
                approve = step == "approve"
                decided = await self._store.decide_review(
                    conn, tenant_id=row["tenant_id"], review_id=row["id"],
                    status="approved" if approve else "declined", decided_by="rescreen",
                    note="screened again once the dependency was back", now=now,
                )
                if decided is None:  # not open any more (the row is locked: cannot happen)
                    continue
                reasons = ["rescreen_approved"] if approve else ["rescreen_declined", *decision.reasons]
                log_on_commit(log, "review_decided", approved=approve, by="rescreen",
                              reasons=reasons, previous=list(row["reasons"]))
                events.append(resolution_event(order, row["id"], approve, reasons, order.payment_id))
        await self._store.reschedule(conn, later)
        await self._outbox.add(conn, events)
        return settled

    async def run(self, stopping: asyncio.Event) -> None:
        await repeat(stopping, self.rescreen_once, interval=self._interval, backlog=self._batch,
                     failed="rescreen_failed")
