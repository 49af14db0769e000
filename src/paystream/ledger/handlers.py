"""Fraud outcomes into ledger postings, in batches: load, decide (`ledger.orders`), write.

One database transaction per batch of events: the handler loads what the batch's orders
need and locks the accounts and holds they may move, `ledger.orders.decide` applies each
signal in order to a `Book`, and the store writes the book's result with the outcome
events (``ledger.posted``, ``ledger.rejected``) in the outbox.

Every payment is decided at most once by its ``external_ref`` (the payment id), so a
redelivered or replayed event changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from paystream.contracts.envelope import Envelope, make_envelope
from paystream.contracts.events import (
    FraudApproved,
    FraudDeclined,
    FraudReview,
    LedgerPosted,
    LedgerRejected,
    payload_of,
)
from paystream.ledger.domain import Book, Posted, Rejected
from paystream.ledger.orders import (
    OrderContext,
    OrderSignal,
    decide,
    moves,
    needs_only_decisions,
    taken_in_another_currency,
)
from paystream.ledger.store import LedgerStore
from paystream.platform.observability import get_logger, log_on_commit
from paystream.platform.outbox import Outbox

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Signal:
    envelope: Envelope
    signal: OrderSignal


def _signals(envelopes: Iterable[Envelope]) -> list[_Signal]:
    out = []
    for e in envelopes:
        if e.type == "fraud.approved":
            approved = payload_of(e, FraudApproved)
            out.append(_Signal(e, OrderSignal("approved", approved.order, approved.review_id)))
        elif e.type == "fraud.review":
            review = payload_of(e, FraudReview)
            out.append(_Signal(e, OrderSignal("review", review.order, review.review_id)))
        elif e.type == "fraud.declined":
            declined = payload_of(e, FraudDeclined)
            # An automatic decline holds and moves nothing (screening_step), so it is left
            # out here and locks no account; a review's decline voids the hold.
            if declined.review_id is not None:
                out.append(_Signal(e, OrderSignal("declined", declined.order, declined.review_id)))
    return out


class LedgerHandlers:
    """Applies fraud outcomes; one database transaction per batch of events."""

    def __init__(self, store: LedgerStore, outbox: Outbox, *, review_hold_seconds: int = 7 * 86400) -> None:
        self._store = store
        self._outbox = outbox
        self._review_hold_seconds = review_hold_seconds

    async def on_fraud_events(self, conn: asyncpg.Connection, envelopes: list[Envelope]) -> None:
        received = _signals(envelopes)
        if not received:
            return
        signals = [r.signal for r in received]
        if needs_only_decisions(signals):
            context, book = await self._lock_plain(conn, signals)
        else:
            context, book = await self._lock(conn, signals)
        events: list[Envelope] = []
        for r in received:
            decision = decide(book, context, r.signal, review_hold_seconds=self._review_hold_seconds)
            order = r.signal.order
            if decision.skipped == "already_decided":
                log.info("ledger_order_already_decided", payment_id=order.payment_id,
                         signal=r.envelope.type, correlation_id=r.envelope.correlation_id)
            elif decision.skipped == "hold_closed_already":
                log.info("ledger_hold_closed_already", payment_id=order.payment_id, code=decision.code)
            if decision.outcome is not None:
                events.append(self._announce(r, decision.outcome))
        await self._store.write_batch(conn, book.accounts, book.result, datetime.now(UTC),
                                      outbox=self._outbox.rows(events))

    async def _lock_plain(self, conn: asyncpg.Connection, signals: list[OrderSignal]) -> tuple[OrderContext, Book]:
        """Plain transfers: which were decided and the accounts, locked, in one round trip."""
        context = OrderContext(decided=set(), holds={}, originals={}, settlement={}, exchange={})
        wanted = moves(signals, context, {})
        decided, accounts = await self._store.lock_accounts_with_decisions(
            conn, [s.key for s in signals], {a for a, _ in wanted}, wanted)
        context.decided |= decided
        return context, Book(accounts)

    async def _lock(self, conn: asyncpg.Connection, signals: list[OrderSignal]) -> tuple[OrderContext, Book]:
        """Any batch: what its orders need, then its holds and accounts, locked in that order."""
        context = await self._load(conn, signals)
        holds = await self._store.lock_holds(conn, context.holds.values())
        wanted = moves(signals, context, holds)
        accounts = await self._store.lock_accounts(conn, {a for a, _ in wanted}, wanted)
        refundable = await self._store.refundable(conn, [o.transfer_id for o in context.originals.values()])
        return context, Book(accounts, holds, refundable)

    async def _load(self, conn: asyncpg.Connection, signals: list[OrderSignal]) -> OrderContext:
        keys = [s.key for s in signals]
        orders = [s.order for s in signals]
        fx = [(o.tenant_id, c) for o in orders if o.destination_currency
              for c in (o.currency, o.destination_currency)]
        await self._store.ensure_system(conn, "exchange", fx)
        decided, holds = await self._store.decisions(conn, keys)
        return OrderContext(
            decided=decided,
            holds=holds,
            originals=await self._store.posted_transfers_by_ref(
                conn, [(o.tenant_id, o.refund_of) for o in orders if o.refund_of]
            ),
            settlement=await self._store.settlement_ids(
                conn, [(o.tenant_id, o.currency) for o in orders if o.kind == "deposit"]
            ),
            exchange=await self._store.system_ids(conn, "exchange", fx),
        )

    @staticmethod
    def _announce(received: _Signal, outcome: Posted | Rejected) -> Envelope:
        order, cause = received.signal.order, received.envelope
        if isinstance(outcome, Posted):
            log_on_commit(log, "ledger_posted", payment_id=order.payment_id,
                          correlation_id=cause.correlation_id,
                          transfer_id=outcome.request.transfer_id, amount=order.amount,
                          currency=order.currency)
            taken = taken_in_another_currency(order, outcome.request)
            event: LedgerPosted | LedgerRejected = LedgerPosted(
                payment_id=order.payment_id, tenant_id=order.tenant_id,
                transfer_id=outcome.request.transfer_id,
                source_amount=taken[0] if taken else None,
                source_currency=taken[1] if taken else None,
            )
        else:
            log_on_commit(log, "ledger_rejected", payment_id=order.payment_id,
                          correlation_id=cause.correlation_id, failure_code=outcome.code)
            event = LedgerRejected(payment_id=order.payment_id, tenant_id=order.tenant_id,
                                   failure_code=outcome.code, detail=outcome.detail)
        return make_envelope(event, partition_key=order.account_key,
                             correlation_id=cause.correlation_id,
                             causation_id=cause.id)
