"""Events into ledger postings: fraud outcomes become transfers and holds, in batches.

* ``fraud.approved`` posts the payment: a two-leg transfer, four legs through the exchange
  accounts when it changes currency, or a refund's reversing legs. When the payment was
  held for review, the approval posts the hold instead.
* ``fraud.review`` holds the payment's funds (a pending transfer) while a human looks, so
  the payer cannot spend them twice. A payer who cannot cover the hold fails at once.
* ``fraud.declined`` after a review voids the hold.
* The first screening decision for a payment wins (`screening_step`): when the screening
  deadline (payments) sent it to review first, fraud's late automatic decision changes
  nothing; only the review's resolution (it names the review) posts or voids the hold.
* A hold nobody decides in ``review_hold_seconds`` expires (`HoldSweeper`): the ledger voids
  it itself and the payment fails with ``review_expired``.

Every payment is decided at most once by its ``external_ref`` (the payment id), so a
redelivered or replayed event changes nothing.
"""

from __future__ import annotations

import asyncio
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
    PaymentOrder,
    payload_of,
)
from paystream.contracts.ids import new_id
from paystream.ledger.domain import (
    Book,
    Direction,
    HoldAction,
    HoldState,
    Posted,
    Rejected,
    ScreeningVerb,
    TransferRequest,
    exchange_legs,
    refund_legs,
    screening_step,
    simple_transfer,
)
from paystream.ledger.lookups import PostedTransfer
from paystream.ledger.store import LedgerStore
from paystream.platform.observability import get_logger, held_until_commit, log_on_commit
from paystream.platform.outbox import Outbox
from paystream.platform.runtime import repeat

log = get_logger(__name__)

# Stands in for an account that does not exist, so the order is rejected.
_MISSING = "acc_missing"
PAYMENT_KINDS = frozenset({"transfer", "deposit", "refund"})

Key = tuple[str, str]  # (tenant, payment id)


@dataclass(frozen=True, slots=True)
class _Signal:
    envelope: Envelope
    verb: ScreeningVerb
    order: PaymentOrder
    review_id: str | None

    @property
    def key(self) -> Key:
        return (self.order.tenant_id, self.order.payment_id)


def _signals(envelopes: Iterable[Envelope]) -> list[_Signal]:
    out = []
    for e in envelopes:
        if e.type == "fraud.approved":
            approved = payload_of(e, FraudApproved)
            out.append(_Signal(e, "approved", approved.order, approved.review_id))
        elif e.type == "fraud.review":
            review = payload_of(e, FraudReview)
            out.append(_Signal(e, "review", review.order, review.review_id))
        elif e.type == "fraud.declined":
            declined = payload_of(e, FraudDeclined)
            # An automatic decline holds and moves nothing (screening_step), so it is left
            # out here and locks no account; a review's decline voids the hold.
            if declined.review_id is not None:
                out.append(_Signal(e, "declined", declined.order, declined.review_id))
    return out


@dataclass(slots=True)
class _Context:
    """What the batch's orders need from the database, loaded before deciding."""

    decided: set[Key]
    holds: dict[Key, str]
    originals: dict[Key, PostedTransfer]
    settlement: dict[Key, str]
    exchange: dict[Key, str]


class LedgerHandlers:
    """Applies fraud outcomes; one database transaction per batch of events."""

    def __init__(self, store: LedgerStore, outbox: Outbox, *, review_hold_seconds: int = 7 * 86400) -> None:
        self._store = store
        self._outbox = outbox
        self._review_hold_seconds = review_hold_seconds

    async def on_fraud_events(self, conn: asyncpg.Connection, envelopes: list[Envelope]) -> None:
        signals = _signals(envelopes)
        if not signals:
            return
        context = await self._load(conn, signals)
        holds = await self._store.lock_holds(conn, context.holds.values())
        moves = self._moves(signals, context, holds)
        accounts = await self._store.lock_accounts(conn, {a for a, _ in moves}, moves)
        refundable = await self._store.refundable(conn, [o.transfer_id for o in context.originals.values()])
        book = Book(accounts, holds, refundable)
        events: list[Envelope] = []
        for signal in signals:
            outcome = self._decide(book, context, signal)
            if outcome is not None:
                events.append(self._announce(signal, outcome))
        await self._store.write_batch(conn, accounts, book.result, datetime.now(UTC),
                                      outbox=self._outbox.rows(events))

    async def _load(self, conn: asyncpg.Connection, signals: list[_Signal]) -> _Context:
        keys = [s.key for s in signals]
        orders = [s.order for s in signals]
        fx = [(o.tenant_id, c) for o in orders if o.destination_currency
              for c in (o.currency, o.destination_currency)]
        await self._store.ensure_system(conn, "exchange", fx)
        decided, holds = await self._store.decisions(conn, keys)
        return _Context(
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
    def _moves(
        signals: list[_Signal], context: _Context, holds: dict[str, HoldState]
    ) -> list[tuple[str, Direction]]:
        """Every (account, direction) the batch may move: what decides which rows to lock.

        A hold's accounts are given both directions (always locked): closing a hold moves
        pending and posted totals together.
        """
        moves: list[tuple[str, Direction]] = []
        for s in signals:
            order = s.order
            if order.source_account_id:
                moves.append((order.source_account_id, "debit"))
            if order.destination_account_id:
                moves.append((order.destination_account_id, "credit"))
            if order.kind == "deposit":
                settlement = context.settlement.get((order.tenant_id, order.currency))
                if settlement:
                    moves.append((settlement, "debit"))
            if order.destination_currency:
                for currency, direction in ((order.currency, "credit"), (order.destination_currency, "debit")):
                    exchange = context.exchange.get((order.tenant_id, currency))
                    if exchange:
                        moves.append((exchange, direction))  # type: ignore[arg-type]
        for original in context.originals.values():  # a refund reverses the original's legs
            moves += [(leg.account_id, "credit" if leg.direction == "debit" else "debit")
                      for leg in original.legs]
        for hold in holds.values():
            for account in (hold.debit_account_id, hold.credit_account_id):
                moves += [(account, "debit"), (account, "credit")]
        return moves

    def _decide(self, book: Book, context: _Context, signal: _Signal) -> Posted | Rejected | None:
        """Apply one signal to the book; the outcome to announce, or None when nothing is due."""
        key, order = signal.key, signal.order
        hold_id = context.holds.get(key)
        step = screening_step(
            signal.verb,
            resolution=signal.review_id is not None and signal.verb != "review",
            decided=key in context.decided, held=hold_id is not None,
            refund=order.kind == "refund",
        )
        if step == "ignore":
            if key in context.decided:
                log.info("ledger_order_already_decided", payment_id=order.payment_id,
                         signal=signal.envelope.type, correlation_id=signal.envelope.correlation_id)
            return None
        if step == "void_hold":
            assert hold_id is not None
            book.act_on_hold(HoldAction(new_id("trf"), order.tenant_id, order.payment_id,
                                        hold_id, "void"))
            return None
        if step == "post_hold":
            assert hold_id is not None
            posted = book.act_on_hold(HoldAction(new_id("trf"), order.tenant_id, order.payment_id,
                                                 hold_id, "post"))
            if isinstance(posted, Rejected):  # voided or expired before the approval came
                log.info("ledger_hold_closed_already", payment_id=order.payment_id, code=posted.code)
                return None
            if order.destination_currency:  # the hold covered the source side of an exchange
                return self._finish_exchange(book, context, order, posted)
            return posted
        context.decided.add(key)
        request = self._request(book, context, order)
        if isinstance(request, Rejected):
            return book.refuse(request)
        if step == "hold":
            request = self._as_hold(request, order)
            outcome = book.transfer(request)
            if isinstance(outcome, Posted):
                context.holds[key] = request.transfer_id
                return None  # held; the payment waits for its reviewer
            return outcome
        return book.transfer(request)

    def _request(self, book: Book, context: _Context, order: PaymentOrder) -> TransferRequest | Rejected:
        """The transfer that posts ``order`` in one step."""
        transfer_id = new_id("trf")
        if order.kind == "refund":
            return self._refund(book, context, order, transfer_id)
        source = order.source_account_id
        if order.kind == "deposit":
            source = context.settlement.get((order.tenant_id, order.currency), _MISSING)
        if order.destination_currency and order.destination_amount:
            legs = exchange_legs(
                source=source or _MISSING,
                source_amount=order.amount,
                source_currency=order.currency,
                source_exchange=context.exchange.get((order.tenant_id, order.currency), _MISSING),
                destination=order.destination_account_id or _MISSING,
                destination_amount=order.destination_amount,
                destination_currency=order.destination_currency,
                destination_exchange=context.exchange.get(
                    (order.tenant_id, order.destination_currency), _MISSING
                ),
            )
            return TransferRequest(transfer_id, order.tenant_id, order.payment_id, order.kind,
                                   order.currency, legs)
        return simple_transfer(
            transfer_id=transfer_id, tenant_id=order.tenant_id, external_ref=order.payment_id,
            kind=order.kind, debit_account=source or _MISSING,
            credit_account=order.destination_account_id or _MISSING,
            amount=order.amount, currency=order.currency,
        )

    @staticmethod
    def _refund(
        book: Book, context: _Context, order: PaymentOrder, transfer_id: str
    ) -> TransferRequest | Rejected:
        """Reversing legs of the refunded payment's posting, for the refund's share of it."""
        assert order.refund_of is not None
        original = context.originals.get((order.tenant_id, order.refund_of))
        if original is None:
            refused = simple_transfer(
                transfer_id=transfer_id, tenant_id=order.tenant_id, external_ref=order.payment_id,
                kind="refund", debit_account=_MISSING, credit_account=_MISSING,
                amount=order.amount, currency=order.currency,
            )
            return Rejected(refused, "refund_not_possible",
                            f"payment {order.refund_of} has no posted transfer to refund")
        # Built for the whole amount asked, even past what is left: the book then refuses it
        # (refund_exceeds_payment) rather than refunding less than was asked.
        before = original.amount - book.refundable.get(original.transfer_id, 0)
        legs = refund_legs(original.legs, original.currency, original.amount, before, order.amount)
        return TransferRequest(
            transfer_id, order.tenant_id, order.payment_id, "refund", original.currency, legs,
            refund_of=original.transfer_id,
        )

    def _as_hold(self, request: TransferRequest, order: PaymentOrder) -> TransferRequest:
        """The pending transfer that holds ``request``'s funds during a review.

        An exchange holds its source side (source → the source currency's exchange account);
        the approval posts the hold and the destination side together.
        """
        debit, credit = request.legs[0], request.legs[1]
        return simple_transfer(
            transfer_id=request.transfer_id, tenant_id=order.tenant_id,
            external_ref=order.payment_id, kind=order.kind, debit_account=debit.account_id,
            credit_account=credit.account_id, amount=debit.amount, currency=order.currency,
            phase="pending", timeout_seconds=self._review_hold_seconds,
        )

    def _finish_exchange(
        self, book: Book, context: _Context, order: PaymentOrder, posted: Posted
    ) -> Posted | Rejected:
        """After a held exchange's source side posts: its destination side."""
        assert order.destination_currency and order.destination_amount
        exchange = context.exchange.get((order.tenant_id, order.destination_currency), _MISSING)
        outcome = book.transfer(simple_transfer(
            transfer_id=new_id("trf"), tenant_id=order.tenant_id,
            external_ref=f"{order.payment_id}:fx", kind=order.kind, debit_account=exchange,
            credit_account=order.destination_account_id or _MISSING,
            amount=order.destination_amount, currency=order.destination_currency,
        ))
        return posted if isinstance(outcome, Posted) else outcome

    @staticmethod
    def _announce(signal: _Signal, outcome: Posted | Rejected) -> Envelope:
        order = signal.order
        if isinstance(outcome, Posted):
            log_on_commit(log, "ledger_posted", payment_id=order.payment_id,
                          correlation_id=signal.envelope.correlation_id,
                          transfer_id=outcome.request.transfer_id, amount=order.amount,
                          currency=order.currency)
            taken = _taken_in_another_currency(order, outcome.request)
            event: LedgerPosted | LedgerRejected = LedgerPosted(
                payment_id=order.payment_id, tenant_id=order.tenant_id,
                transfer_id=outcome.request.transfer_id,
                source_amount=taken[0] if taken else None,
                source_currency=taken[1] if taken else None,
            )
        else:
            log_on_commit(log, "ledger_rejected", payment_id=order.payment_id,
                          correlation_id=signal.envelope.correlation_id, failure_code=outcome.code)
            event = LedgerRejected(payment_id=order.payment_id, tenant_id=order.tenant_id,
                                   failure_code=outcome.code, detail=outcome.detail)
        return make_envelope(event, partition_key=order.account_key,
                             correlation_id=signal.envelope.correlation_id,
                             causation_id=signal.envelope.id)


def _taken_in_another_currency(order: PaymentOrder, request: TransferRequest) -> tuple[int, str] | None:
    """What a refund of an exchange took from its source account (the original payee) in that
    account's currency, which is not the refund's own; None for every other posting."""
    if order.kind != "refund" or not order.source_account_id:
        return None
    for leg in request.legs:
        currency = request.currency_of(leg)
        if leg.account_id == order.source_account_id and leg.direction == "debit" and currency != order.currency:
            return leg.amount, currency
    return None


class DeltaFolder:
    """Folds balance deltas (migration 006) into their accounts' rows in the background, so an
    account that is only ever paid into does not collect deltas without end."""

    def __init__(self, pool: asyncpg.Pool, store: LedgerStore, *, interval: float = 2.0,
                 batch: int = 500) -> None:
        self._pool = pool
        self._store = store
        self._interval = interval
        self._batch = batch

    async def fold_once(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            return await self._store.fold_deltas(conn, self._batch)

    async def run(self, stopping: asyncio.Event) -> None:
        await repeat(stopping, self.fold_once, interval=self._interval, backlog=self._batch,
                     failed="delta_fold_failed")


class HoldSweeper:
    """Expires holds past their timeout: the ledger voids them itself, a batch at a time.

    A payment whose review hold expires fails with ``review_expired``; a hold made through
    the public API just closes (its owner sees ``status: expired``).
    """

    def __init__(self, pool: asyncpg.Pool, store: LedgerStore, outbox: Outbox, *,
                 interval: float = 1.0, batch: int = 500) -> None:
        self._pool = pool
        self._store = store
        self._outbox = outbox
        self._interval = interval
        self._batch = batch

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Expire what is due at ``now``; returns how many holds expired."""
        now = now or datetime.now(UTC)
        with held_until_commit():
            return await self._expire(now)

    async def _expire(self, now: datetime) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            holds = await self._store.due_holds(conn, now, self._batch)
            if not holds:
                return 0
            accounts = await self._store.lock_accounts(
                conn, {a for h in holds.values() for a in (h.debit_account_id, h.credit_account_id)}
            )
            book = Book(accounts, holds)
            events = []
            for hold in holds.values():
                outcome = book.act_on_hold(HoldAction(new_id("trf"), hold.tenant_id,
                                                      hold.external_ref, hold.transfer_id, "expire"))
                if isinstance(outcome, Posted) and hold.kind in PAYMENT_KINDS:
                    log_on_commit(log, "ledger_hold_expired", payment_id=hold.external_ref)
                    key = hold.credit_account_id if hold.kind == "deposit" else hold.debit_account_id
                    events.append(make_envelope(
                        LedgerRejected(payment_id=hold.external_ref, tenant_id=hold.tenant_id,
                                       failure_code="review_expired",
                                       detail="the review was not decided before its hold expired"),
                        partition_key=key, correlation_id=hold.external_ref,
                    ))
            await self._store.write_batch(conn, accounts, book.result, now,
                                          outbox=self._outbox.rows(events))
            return len(holds)

    async def run(self, stopping: asyncio.Event) -> None:
        await repeat(stopping, self.sweep_once, interval=self._interval, failed="hold_sweep_failed")
